"""Datasets as users have them on disk: the tonic layouts of N-MNIST, DVS128 Gesture, CIFAR10-DVS and
N-Caltech101, read directly (a partial or custom copy works), with the splits the field uses."""
from .layouts import DATASETS, DatasetSplit, LabelledFile, open_dataset

__all__ = ["DATASETS", "DatasetSplit", "LabelledFile", "open_dataset"]
