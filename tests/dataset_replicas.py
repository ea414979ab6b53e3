"""Small replicas of the tonic dataset layouts, written in the real file formats.

Each class draws its events around its own spot of the sensor, so a network can tell classes apart.
Writers: numpy (DVS128 Gesture's .npy), dv-processing's MonoCameraWriter (CIFAR10-DVS AEDAT 4), the
project's ATIS writer (N-MNIST, N-Caltech101).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from streamsnn.events import make_events
from streamsnn.io.atis import write_atis_bin


def class_events(label: int, width: int, height: int, n: int, duration_us: int, rng, x0: int = 0, y0: int = 0):
    """n events, time-sorted over ``duration_us``, clustered at a spot that depends on ``label``."""
    cx = x0 + (width // 4) * (1 + label % 2) + rng.integers(-2, 3)
    cy = y0 + (height // 4) * (1 + (label // 2) % 2) + rng.integers(-2, 3)
    x = np.clip(cx + rng.integers(-3, 4, n), x0, x0 + width - 1)
    y = np.clip(cy + rng.integers(-3, 4, n), y0, y0 + height - 1)
    t = np.sort(rng.integers(0, duration_us, n))
    return make_events(x, y, t, rng.integers(0, 2, n))


def write_gesture(root: Path, users=None, labels=(0, 1, 2), n: int = 400, seed: int = 0) -> Path:
    """ROOT/DVSGesture/ibmGesture{Train,Test}/userNN_<lighting>/<label>.npy; x, y, p, t (ms) columns.
    Train users write int32 tables, test users float64 (both occur in the wild)."""
    rng = np.random.default_rng(seed)
    users = users or {"ibmGestureTrain": ["user01_fluorescent", "user02_led"], "ibmGestureTest": ["user24_led"]}
    for split, names in users.items():
        for user in names:
            folder = root / "DVSGesture" / split / user
            folder.mkdir(parents=True, exist_ok=True)
            for label in labels:
                ev = class_events(label, 128, 128, n, 2_000_000, rng)
                table = np.stack([ev["x"], ev["y"], ev["p"], ev["t"] // 1000], axis=1)
                np.save(folder / f"{label}.npy", table.astype(np.int32 if split.endswith("Train") else np.float64))
    return root


def write_cifar10dvs(root: Path, classes=("airplane", "cat"), per_class: int = 10, n: int = 300, seed: int = 0):
    """ROOT/CIFAR10DVS/<class>/cifar10_<class>_<i>.aedat4, written by dv-processing."""
    import dv_processing as dv

    rng = np.random.default_rng(seed)
    from streamsnn.datasets.cifar10dvs import CLASSES

    for name in classes:
        folder = root / "CIFAR10DVS" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ev = class_events(CLASSES.index(name), 128, 128, n, 1_000_000, rng)
            config = dv.io.MonoCameraWriter.EventOnlyConfig("DVS128", (128, 128))
            writer = dv.io.MonoCameraWriter(str(folder / f"cifar10_{name}_{i}.aedat4"), config)
            store = dv.EventStore()
            for e in ev:
                store.push_back(int(e["t"]) + 1_000_000, int(e["x"]), int(e["y"]), bool(e["p"]))
            writer.writeEvents(store)
            del writer
    return root


def write_ncaltech101(root: Path, classes=("BACKGROUND_Google", "accordion", "airplanes"), per_class: int = 10,
                      n: int = 300, seed: int = 0):
    """ROOT/NCALTECH101/Caltech101/<class>/image_NNNN.bin (ATIS 40-bit); recordings start at an
    offset (x0, y0) as the real ones do."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / "NCALTECH101" / "Caltech101" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ev = class_events(label, 200, 150, n, 300_000, rng, x0=3 + i % 4, y0=2 + i % 3)
            write_atis_bin(folder / f"image_{i + 1:04d}.bin", ev)
    return root


def write_nmnist(root: Path, digits=("0", "1", "7"), per_split=(("Train", 6), ("Test", 2)), n: int = 300,
                 seed: int = 0):
    """ROOT/NMNIST/{Train,Test}/<digit>/<i>.bin (ATIS 40-bit, 34x34)."""
    rng = np.random.default_rng(seed)
    for split, count in per_split:
        for label, digit in enumerate(digits):
            folder = root / "NMNIST" / split / digit
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write_atis_bin(folder / f"{i:05d}.bin", class_events(label, 34, 34, n, 300_000, rng))
    return root
