"""CIFAR10-DVS as tonic extracts it: ``ROOT[/CIFAR10DVS]/<class>/*.aedat4`` (AEDAT 4, 128x128).

Classes are tonic's indices (airplane 0 ... truck 9) whatever folders a partial copy holds. There is no
official split: the field's seeded, stratified 9:1 split (:mod:`streamsnn.datasets.splits`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import EventFormatError
from ..io import read_events
from .base import DatasetSplit, LabelledFile, sorted_files

NAME = "cifar10dvs"
TONIC_NAME = "CIFAR10DVS"
SENSOR_SIZE = (128, 128, 2)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LAYOUT = "ROOT[/CIFAR10DVS]/<class>/*.aedat4"
SUFFIXES = (".aedat4",)


def locate(root: Path) -> Path | None:
    for cand in (root, root / TONIC_NAME):
        if any((cand / c).is_dir() for c in CLASSES):
            return cand
    return None


read_sample = partial(read_events, sensor_size=SENSOR_SIZE[:2])


def list_all(base: Path) -> DatasetSplit:
    unknown = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in CLASSES)
    if unknown:
        raise EventFormatError(base, f"folder(s) {', '.join(unknown)} are not CIFAR10-DVS classes "
                                     f"({', '.join(CLASSES)})")
    files = []
    for label, name in enumerate(CLASSES):
        if (base / name).is_dir():
            files.extend(LabelledFile(f, label) for f in sorted_files(base / name, SUFFIXES))
    if not files:
        raise EventFormatError(base, "no <class>/*.aedat4 files inside")
    return DatasetSplit(NAME, "all", base, SENSOR_SIZE, list(CLASSES), files, read_sample)


def tonic_download(root: Path) -> None:
    import tonic

    tonic.datasets.CIFAR10DVS(save_to=str(root))
