"""N-MNIST as tonic extracts it: ``ROOT[/NMNIST]/{Train,Test}/<digit>/<n>.bin`` (ATIS 40-bit).

Any folder in that layout works the same way (``ROOT/<split>/<class>/<sample>``, each sample in a
format :func:`streamsnn.io.read_events` reads), at the sensor size of the model it trains.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..io import read_events
from ..io.folder import SampleFolder
from .base import DatasetSplit, LabelledFile

NAME = "nmnist"
TONIC_NAME = "NMNIST"
SENSOR_SIZE = (34, 34, 2)
LAYOUT = "ROOT[/NMNIST]/{Train,Test}/<class>/<sample>.bin"
SPLITS = ("Train", "Test")


def locate(root: Path) -> Path | None:
    for cand in (root, root / TONIC_NAME):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    return None


def open_split(base: Path, split: str, sensor_size=SENSOR_SIZE) -> DatasetSplit:
    folder = SampleFolder(base, split)
    files = [LabelledFile(s.path, s.label) for s in folder.samples]
    sensor = tuple(int(v) for v in sensor_size)
    return DatasetSplit(NAME, split, base, sensor, list(folder.classes), files,
                        partial(read_events, sensor_size=sensor[:2]), {"rule": "Train/Test folders"})


def tonic_download(root: Path) -> None:
    from .download import download_nmnist

    for train in (True, False):
        download_nmnist(root, train=train)
