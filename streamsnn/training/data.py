"""The frame cache: every sample of a dataset split binned once with the project's binner, kept in HDF5
and read back by batch, so a dataset larger than memory trains in bounded memory.

Frames of a sample (the exact rule the streaming job follows online):
``to_frame(events, sensor_size, time_window=W, include_incomplete=True)``,
i.e. windows ``[t0 + k*W, t0 + (k+1)*W)`` with t0 the sample's first event
(the StreamingBinner's default start), the first T kept and zero frames
appended when a sample is shorter than T windows. Counts are int16, shaped
(N, T, P, H, W) for a split, at the dataset's sensor size (resizing to the
model's input happens per batch, in :func:`streamsnn.snn.preprocess.resize_input`).

The cache is written sample by sample (one HDF5 chunk per sample), so building it holds one sample in
memory, and :class:`FrameCache` reads only the samples of the batch asked for. The cache key covers the
dataset name, the files (relative path, size, mtime), the binning parameters and BINNING_VERSION; a
changed file or parameter makes a new cache file, a finished cache file is never rewritten (written to
a temporary name, then renamed).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..datasets.base import DatasetSplit

BINNING_VERSION = 2


def default_cache_dir() -> Path:
    env = os.environ.get("STREAMSNN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "streamsnn"


def bin_events(events, sensor_size, time_window: float, timesteps: int) -> np.ndarray:
    """Events of one sample -> (T, P, H, W) int16 counts, by the rule in the module docstring."""
    from ..binning import to_frame

    w, h, p = (int(v) for v in sensor_size)
    out = np.zeros((timesteps, p, h, w), dtype=np.int16)
    if events.size == 0:
        return out
    frames = to_frame(events, (w, h, p), time_window=int(time_window), include_incomplete=True)
    k = min(timesteps, frames.shape[0])
    out[:k] = frames[:k]
    return out


def _fingerprint(ds: DatasetSplit, time_window, timesteps) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": BINNING_VERSION, "dataset": ds.name, "sensor": list(map(int, ds.sensor_size)),
                         "tw": float(time_window), "T": int(timesteps), "split": ds.split,
                         "classes": list(ds.class_names)}).encode())
    for f, name in zip(ds.files, ds.relative_names()):
        st = f.path.stat()
        h.update(f"{name}|{f.label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def frame_cache_path(ds: DatasetSplit, time_window: float, timesteps: int, cache_dir=None) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / f"frames-{ds.name}-{ds.split}-{_fingerprint(ds, time_window, timesteps)}.h5"


def build_frame_cache(ds: DatasetSplit, time_window: float, timesteps: int, cache_dir=None,
                      progress: bool = True) -> Path:
    """The cache file of ``ds`` for this binning, built (one sample at a time) when absent."""
    import h5py

    path = frame_cache_path(ds, time_window, timesteps, cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h, p = (int(v) for v in ds.sensor_size)
    shape = (len(ds), timesteps, p, h, w)
    indices = range(len(ds))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"binning {ds.name} {ds.split}", unit="file", dynamic_ncols=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            frames = f.create_dataset("frames", shape=shape, dtype=np.int16, compression="gzip",
                                      compression_opts=1, chunks=(1, *shape[1:]))
            for i in indices:
                frames[i] = bin_events(ds.read(i), ds.sensor_size, time_window, timesteps)
            f.create_dataset("labels", data=ds.labels)
            f.attrs["dataset"] = ds.name
            f.attrs["class_names"] = json.dumps(list(ds.class_names))
            f.attrs["files"] = json.dumps(ds.relative_names())
            f.attrs["binning"] = json.dumps({"time_window": float(time_window), "timesteps": int(timesteps),
                                             "sensor_size": list(map(int, ds.sensor_size)),
                                             "start": "first event", "include_incomplete": True})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class FrameCache:
    """A built cache file, read by batch: ``take(indices)`` -> (len(indices), T, P, H, W) int16.

    Labels and class names are in memory; frames stay on disk (each read decompresses only the
    samples asked for). ``shape`` is the shape of the whole split's frames."""

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")
        self._frames = self._file["frames"]
        self.labels = self._file["labels"][()]
        self.class_names = json.loads(self._file.attrs["class_names"])
        self.shape = tuple(self._frames.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((indices.size, *self.shape[1:]), dtype=np.int16)
        for j, i in enumerate(indices):
            self._frames.read_direct(out, np.s_[int(i)], np.s_[j])
        return out

    def read_all(self) -> np.ndarray:
        return self._frames[()]

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ArrayFrames:
    """Frames already in memory, with the interface of :class:`FrameCache` (``take``, ``shape``)."""

    def __init__(self, frames):
        self.frames = np.asarray(frames)
        self.shape = tuple(self.frames.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices) -> np.ndarray:
        return self.frames[np.asarray(indices, dtype=np.int64)]


def frame_source(frames):
    """A FrameCache as it is, anything array-like wrapped in :class:`ArrayFrames`."""
    return frames if isinstance(frames, (FrameCache, ArrayFrames)) else ArrayFrames(frames)
