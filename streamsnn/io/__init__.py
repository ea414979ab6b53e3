"""Event readers and the HDF5 event store (the streaming sources live in ``streamsnn.stream.sources``).

``read_events(path)`` and ``open_recording(path)`` find the format from the
content (header magic) first and the extension second, and hand the file to
the reader of that format family:

    prophesee.py  RAW EVT 2.0, RAW EVT 3.0, DAT
    aedat.py      AEDAT 4.0, AEDAT 2.0 (jAER DVS128)
    atis.py       ATIS 40-bit .bin (N-MNIST, N-Caltech101)
    arrays.py     .npy structured arrays
    store.py      the project's HDF5 event store (and ``convert_to_store``)
"""
from __future__ import annotations

import importlib

import numpy as np

from .base import Recording, TruncatedRecordingWarning
from .detect import FORMATS, FORMAT_DESCRIPTIONS, detect_format

_READERS = {
    "evt2": ("prophesee", "Evt2Recording"),
    "evt3": ("prophesee", "Evt3Recording"),
    "dat": ("prophesee", "DatRecording"),
    "aedat4": ("aedat", "Aedat4Recording"),
    "aedat2": ("aedat", "Aedat2Recording"),
    "atis_bin": ("atis", "AtisBinRecording"),
    "npy": ("arrays", "NpyRecording"),
    "hdf5": ("store", "StoreRecording"),
}


def recording_class(fmt: str) -> type[Recording]:
    module, name = _READERS[fmt]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def open_recording(path, sensor_size=None) -> Recording:
    """Open an event file of any known format (see ``FORMATS``) for reading or chunked iteration.

    sensor_size is used when the file does not say its own (ATIS .bin,
    headerless DAT/.npy, RAW files from unknown sensors).
    """
    fmt = detect_format(path)
    return recording_class(fmt)(path, sensor_size=sensor_size)


def read_events(path, sensor_size=None) -> np.ndarray:
    """All events of a file as an EVENT_DTYPE array (t, x, y, p), in file order."""
    with open_recording(path, sensor_size=sensor_size) as recording:
        return recording.read()


def recording_info(path, sensor_size=None) -> dict:
    """Format, sensor size, event count, time span and event rate of a file (``streamsnn info``)."""
    from .info import recording_info as _info

    return _info(path, sensor_size=sensor_size)


_LAZY = {
    "EventStoreWriter": "store", "StoreRecording": "store", "write_store": "store",
    "write_raw": "prophesee", "write_npy": "arrays",
}


def __getattr__(name: str):
    # The store and writers import h5py and Numba; only load them when asked.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def convert_to_store(input, output, sensor_size=None, overwrite=False) -> dict:
    """Convert any readable recording to the HDF5 event store (``streamsnn convert``)."""
    from .store import convert_to_store as _convert

    return _convert(input, output, sensor_size=sensor_size, overwrite=overwrite)


__all__ = [
    "FORMATS", "FORMAT_DESCRIPTIONS", "EventStoreWriter", "Recording", "StoreRecording", "TruncatedRecordingWarning",
    "convert_to_store", "detect_format", "open_recording", "read_events", "recording_class", "recording_info",
    "write_npy", "write_raw", "write_store",
]
