"""Datasets laid out like the official N-MNIST archive: ``ROOT/<split>/<class>/<sample file>``.

One file is one sample (one inference window); its class is the name of the
folder that holds it. Shared by training (frames for every sample) and by the
streaming job's folder source (one window per sample, ``target`` carried into
the decision messages).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EventFormatError

SAMPLE_SUFFIXES = (".bin", ".aedat", ".aedat4", ".raw", ".dat", ".npy", ".h5", ".hdf5")


def _class_sort_key(name: str):
    # Numeric class folders (N-MNIST's 0..9) sort by value, others by name.
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    class_name: str


class SampleFolder:
    """The samples of one split, in a deterministic order (class, then file name)."""

    def __init__(self, root: str | os.PathLike, split: str = "Test"):
        self.root = Path(root)
        self.split = split
        split_dir = self.root / split
        if not self.root.exists():
            raise EventFormatError(self.root, "dataset folder does not exist")
        if not split_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise EventFormatError(
                self.root, f"no '{split}' folder; expected the N-MNIST archive layout "
                f"ROOT/{split}/<class>/<sample>.bin (found folders: {', '.join(present) or 'none'})")
        self.classes = sorted((p.name for p in split_dir.iterdir() if p.is_dir()), key=_class_sort_key)
        if not self.classes:
            raise EventFormatError(split_dir, "no class folders inside")
        self.samples: list[Sample] = []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in (split_dir / name).iterdir()
                           if f.is_file() and f.suffix.lower() in SAMPLE_SUFFIXES)
            self.samples.extend(Sample(f, label, name) for f in files)
        if not self.samples:
            raise EventFormatError(split_dir, f"no sample files ({', '.join(SAMPLE_SUFFIXES)}) in the class folders")

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def is_sample_folder(path: str | os.PathLike) -> bool:
    """True for a dataset root (holding Train/ or Test/) or a split folder of class folders."""
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / "Test").is_dir() or (path / "Train").is_dir()
