"""Types shared by the dataset layouts: a labelled sample file and one split of a dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LabelledFile:
    """One sample (one inference window): its file and its class index."""

    path: Path
    label: int


@dataclass
class DatasetSplit:
    """The samples of one split in a deterministic order, and how to read them.

    ``root`` is the folder the relative file names (cache keys, the held-out list) are taken from;
    ``read(i)`` returns the events of sample ``i`` (EVENT_DTYPE, t in µs, sorted) inside ``sensor_size``;
    ``split_info`` says how the split was made (stored in the checkpoint).
    """

    name: str
    split: str
    root: Path
    sensor_size: tuple
    class_names: list
    files: list
    reader: Callable[[Path], np.ndarray]
    split_info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> np.ndarray:
        return np.array([f.label for f in self.files], dtype=np.int64)

    def relative_names(self) -> list:
        return [f.path.relative_to(self.root).as_posix() for f in self.files]

    def read(self, index: int) -> np.ndarray:
        return self.reader(self.files[index].path)


def sorted_files(folder: Path, suffixes) -> list:
    """The files of ``folder`` whose suffix is one of ``suffixes`` (lower case), sorted by name."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in suffixes)


def drop_outside(events: np.ndarray, sensor_size) -> np.ndarray:
    """Events inside (width, height): for datasets whose recordings vary in size around a nominal sensor."""
    w, h = int(sensor_size[0]), int(sensor_size[1])
    inside = (events["x"] >= 0) & (events["x"] < w) & (events["y"] >= 0) & (events["y"] < h)
    return events if inside.all() else events[inside]
