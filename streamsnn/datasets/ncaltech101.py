"""N-Caltech101 as tonic extracts it: ``ROOT[/NCALTECH101]/Caltech101/<class>/image_NNNN.bin`` (ATIS 40-bit).

Every class folder is a class, ``BACKGROUND_Google`` included (as tonic does), in sorted name order.
Recordings differ in size; as tonic does, each is shifted so its smallest x and y are 0, then events
outside the nominal 240x180 sensor are dropped (the larger recordings' far edge). No official split: the
field's seeded, stratified 9:1 split (:mod:`streamsnn.datasets.splits`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EventFormatError
from ..io.atis import read_atis_bin
from .base import DatasetSplit, LabelledFile, drop_outside, sorted_files

NAME = "ncaltech101"
TONIC_NAME = "NCALTECH101"
INNER = "Caltech101"
SENSOR_SIZE = (240, 180, 2)
LAYOUT = "ROOT[/NCALTECH101/Caltech101]/<class>/*.bin"
SUFFIXES = (".bin",)


def locate(root: Path) -> Path | None:
    for cand in (root / TONIC_NAME / INNER, root / INNER, root):
        if cand.is_dir() and any(p.is_dir() and any(p.glob("*.bin")) for p in cand.iterdir()):
            return cand
    return None


def read_sample(path) -> np.ndarray:
    events = read_atis_bin(path)
    if events.size:
        events["x"] -= events["x"].min()
        events["y"] -= events["y"].min()
    return drop_outside(events, SENSOR_SIZE)


def list_all(base: Path) -> DatasetSplit:
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and any(p.glob("*.bin")))
    if not classes:
        raise EventFormatError(base, "no <class>/*.bin folders inside")
    files = []
    for label, name in enumerate(classes):
        files.extend(LabelledFile(f, label) for f in sorted_files(base / name, SUFFIXES))
    return DatasetSplit(NAME, "all", base, SENSOR_SIZE, classes, files, read_sample)


def tonic_download(root: Path) -> None:
    import tonic

    tonic.datasets.NCALTECH101(save_to=str(root))
