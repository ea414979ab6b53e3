"""DVS128 Gesture as tonic extracts it (its preprocessed release: recordings already cut per gesture):

    ROOT[/DVSGesture]/ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy
    ROOT[/DVSGesture]/ibmGestureTest/user24_led/...

One ``.npy`` per gesture: an (N, 4) array, columns x, y, p, t with t in milliseconds; the class is
the file name. The dataset's own split (users 1-23 train, 24-29 test) is the folders'.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EventFormatError
from ..events import EVENT_DTYPE
from .base import DatasetSplit, LabelledFile, sorted_files

NAME = "dvsgesture"
TONIC_NAME = "DVSGesture"
SENSOR_SIZE = (128, 128, 2)
LAYOUT = "ROOT[/DVSGesture]/ibmGesture{Train,Test}/userNN_<lighting>/<class index>.npy"
SPLIT_FOLDERS = {"Train": "ibmGestureTrain", "Test": "ibmGestureTest"}
CLASSES = ["Hand clapping", "Right hand wave", "Left hand wave", "Right arm cw", "Right arm ccw",
           "Left arm cw", "Left arm ccw", "Arm roll", "Air drums", "Air guitar", "Other gestures"]


def locate(root: Path) -> Path | None:
    for cand in (root, root / TONIC_NAME):
        if any((cand / f).is_dir() for f in SPLIT_FOLDERS.values()):
            return cand
    return None


def read_sample(path) -> np.ndarray:
    """One gesture file -> events (t in µs)."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EventFormatError(path, f"not a readable .npy array ({exc})") from exc
    if table.ndim != 2 or table.shape[1] != 4 or table.dtype.kind not in "iuf":
        raise EventFormatError(path, f"expected an (N, 4) numeric array of x, y, p, t (ms); got shape "
                                     f"{table.shape}, dtype {table.dtype}")
    events = np.empty(table.shape[0], dtype=EVENT_DTYPE)
    t_us = np.rint(table[:, 3].astype(np.float64) * 1000.0)
    for name, column, low, high in (("x", table[:, 0], 0, SENSOR_SIZE[0]), ("y", table[:, 1], 0, SENSOR_SIZE[1]),
                                    ("p", table[:, 2], 0, 2)):
        bad = np.flatnonzero((column < low) | (column >= high) | (column != np.floor(column)))
        if bad.size:
            i = int(bad[0])
            raise EventFormatError(path, f"row {i}: {name} = {column[i]} is not an integer in [{low}, {high})")
        events[name] = column
    back = np.flatnonzero(np.diff(t_us) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise EventFormatError(path, f"row {i}: t steps back from {table[i - 1, 3]} to {table[i, 3]} ms")
    events["t"] = t_us.astype(np.int64)
    return events


def _label(path: Path) -> int:
    try:
        label = int(path.stem)
    except ValueError:
        label = -1
    if not 0 <= label < len(CLASSES):
        raise EventFormatError(path, f"file name must be the class index 0..{len(CLASSES) - 1} (.npy)")
    return label


def open_split(base: Path, split: str) -> DatasetSplit:
    folder = base / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise EventFormatError(base, f"no {SPLIT_FOLDERS[split]}/ folder for the {split} split of DVS128 Gesture")
    files = []
    for user_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = sorted(sorted_files(user_dir, (".npy",)), key=_label)
        files.extend(LabelledFile(f, _label(f)) for f in found)
    if not files:
        raise EventFormatError(folder, "no userNN_<lighting>/<class>.npy files inside")
    return DatasetSplit(NAME, split, base, SENSOR_SIZE, list(CLASSES), files, read_sample,
                        {"rule": "the dataset's own train/test users"})


def tonic_download(root: Path) -> None:
    import tonic

    for train in (True, False):
        tonic.datasets.DVSGesture(save_to=str(root), train=train)
