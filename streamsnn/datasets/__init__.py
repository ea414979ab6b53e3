"""Datasets: the demo data bundled in the package, and the public datasets as users have them on disk
(the tonic layouts of N-MNIST, DVS128 Gesture, CIFAR10-DVS and N-Caltech101, read directly, so a
partial or custom copy works, with the splits the field uses)."""
from __future__ import annotations

from .bundled import bundled_nmnist_root, cache_dir
from .download import download_nmnist
from .layouts import DATASETS, DatasetSplit, LabelledFile, open_dataset

__all__ = ["DATASETS", "DatasetSplit", "LabelledFile", "bundled_nmnist_root", "cache_dir", "download_nmnist",
           "open_dataset"]
