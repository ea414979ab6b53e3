"""Training data: every sample of a split binned once with the project's binner, cached in HDF5.

Frames of a sample (the exact rule the streaming job follows online):
``to_frame(events, sensor_size, time_window=W, include_incomplete=True)``,
i.e. windows ``[t0 + k*W, t0 + (k+1)*W)`` with t0 the sample's first event
(the StreamingBinner's default start), the first T kept and zero frames
appended when a sample is shorter than T windows. Counts are int16, shaped
(N, T, P, H, W) for a split.

The cache key covers the dataset files (relative path, size, mtime), the
binning parameters and this module's BINNING_VERSION; a changed file or
parameter makes a new cache file, a finished cache file is never rewritten
(written to a temporary name, then renamed).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io.folder import SampleFolder

BINNING_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("STREAMSNN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "streamsnn"


def resolve_dataset(root, download: bool = True) -> Path:
    """The dataset root holding Train/ and Test/. ``root/NMNIST`` (tonic's layout) is accepted too.
    When ``root`` does not exist, N-MNIST is downloaded into it with tonic (needs the network)."""
    root = Path(root)
    for cand in (root, root / "NMNIST"):
        if (cand / "Train").is_dir() or (cand / "Test").is_dir():
            return cand
    if root.exists() or not download:
        return root  # SampleFolder raises the precise error
    try:
        import tonic

        for train in (True, False):
            tonic.datasets.NMNIST(save_to=str(root), train=train)
    except Exception as exc:
        raise ConfigError(f"{root}: dataset folder does not exist and the N-MNIST download with tonic failed "
                          f"({type(exc).__name__}: {exc})") from exc
    return resolve_dataset(root, download=False)


def bin_sample(path, sensor_size, time_window: float, timesteps: int) -> np.ndarray:
    """One sample file -> (T, P, H, W) int16 counts, by the rule in the module docstring."""
    from ..binning import to_frame
    from ..io import read_events

    events = read_events(path)
    w, h, p = (int(v) for v in sensor_size)
    out = np.zeros((timesteps, p, h, w), dtype=np.int16)
    if events.size == 0:
        return out
    frames = to_frame(events, (w, h, p), time_window=int(time_window), include_incomplete=True)
    k = min(timesteps, frames.shape[0])
    out[:k] = frames[:k]
    return out


def _fingerprint(folder: SampleFolder, sensor_size, time_window, timesteps) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": BINNING_VERSION, "sensor": list(map(int, sensor_size)),
                         "tw": float(time_window), "T": int(timesteps), "split": folder.split,
                         "classes": folder.classes}).encode())
    for s in folder.samples:
        st = s.path.stat()
        h.update(f"{s.path.relative_to(folder.root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_split(root, split: str, sensor_size, time_window: float, timesteps: int, cache_dir=None,
               progress: bool = True, build: bool = True):
    """(frames (N, T, P, H, W) int16, labels (N,) int64, class_names) for one split, from the cache
    when present (built on first use; ``build=False`` waits for another process to build it)."""
    import h5py

    folder = SampleFolder(root, split)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _fingerprint(folder, sensor_size, time_window, timesteps)
    path = cache_dir / f"frames-{split}-{key}.h5"
    if not path.exists() and build:
        cache_dir.mkdir(parents=True, exist_ok=True)
        n = len(folder)
        w, h, p = (int(v) for v in sensor_size)
        frames = np.zeros((n, timesteps, p, h, w), dtype=np.int16)
        it = folder.samples
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"binning {split}", unit="file", dynamic_ncols=True)
        for i, s in enumerate(it):
            frames[i] = bin_sample(s.path, sensor_size, time_window, timesteps)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with h5py.File(tmp, "w") as f:
            f.create_dataset("frames", data=frames, compression="gzip", compression_opts=1, chunks=(1, *frames.shape[1:]))
            f.create_dataset("labels", data=np.array([s.label for s in folder.samples], dtype=np.int64))
            f.attrs["class_names"] = json.dumps(folder.classes)
            f.attrs["files"] = json.dumps([str(s.path.relative_to(folder.root)) for s in folder.samples])
            f.attrs["binning"] = json.dumps({"time_window": float(time_window), "timesteps": int(timesteps),
                                             "sensor_size": list(map(int, sensor_size)),
                                             "start": "first event", "include_incomplete": True})
        os.replace(tmp, path)
    with h5py.File(path, "r") as f:
        frames = f["frames"][()]
        labels = f["labels"][()]
        classes = json.loads(f.attrs["class_names"])
    return frames, labels, classes, path
