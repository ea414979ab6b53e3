"""Which format a file is in: its content first (header magic), its extension second.

Only a few leading bytes are read, so detection is cheap on any file size.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import EventFormatError

FORMATS = ("evt2", "evt3", "dat", "aedat4", "aedat2", "atis_bin", "npy", "hdf5")

FORMAT_DESCRIPTIONS = {
    "evt2": "Prophesee RAW EVT 2.0 (.raw)",
    "evt3": "Prophesee RAW EVT 3.0 (.raw)",
    "dat": "Prophesee DAT (.dat)",
    "aedat4": "AEDAT 4.0 (.aedat4)",
    "aedat2": "AEDAT 2.0, jAER DVS128 (.aedat)",
    "atis_bin": "ATIS 40-bit, N-MNIST/N-Caltech101 (.bin)",
    "npy": "numpy structured array (.npy)",
    "hdf5": "streamsnn HDF5 event store (.h5, .hdf5)",
}

_EXTENSIONS = {
    ".bin": "atis_bin",
    ".npy": "npy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".aedat4": "aedat4",
    ".dat": "dat",
}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# An event store's summary, in the HDF5 user block in front of the file (io/store.py).
STORE_SUMMARY_MAGIC = b"streamsnn-store\n"


def looks_like_hdf5(head: bytes) -> bool:
    """head (a file's first PROBE_BYTES) starts an HDF5 file: its signature at byte 0, or where the
    format lets a user block end (512, 1024, 2048, ... bytes in), or an event store's summary."""
    if head.startswith(HDF5_MAGIC) or head.startswith(STORE_SUMMARY_MAGIC):
        return True
    offset = 512
    while offset + len(HDF5_MAGIC) <= len(head):
        if head[offset:offset + len(HDF5_MAGIC)] == HDF5_MAGIC:
            return True
        offset *= 2
    return False


NPY_MAGIC = b"\x93NUMPY"
PROBE_BYTES = 64 * 1024


def known_formats_text() -> str:
    return "; ".join(FORMAT_DESCRIPTIONS.values())


def check_readable_file(path) -> Path:
    path = Path(path)
    try:
        mode = os.stat(path).st_mode      # one system call (a folder replay opens every sample)
    except (FileNotFoundError, NotADirectoryError):
        raise EventFormatError(path, "no such file") from None
    except OSError as exc:
        raise EventFormatError(path, f"cannot be read ({exc.strerror})") from None
    except ValueError:                    # os.stat's "embedded null byte"
        raise EventFormatError(path, "the file name holds a NUL byte, which no file name can") from None
    if stat.S_ISDIR(mode):
        raise EventFormatError(path, "is a folder, not an event file (a dataset folder is read with SampleFolder)")
    if not stat.S_ISREG(mode):
        raise EventFormatError(path, "is not a regular file (a device, pipe or socket): a recording is a file")
    if not os.access(path, os.R_OK):
        raise EventFormatError(path, "is not readable (permission denied)")
    return path


def prophesee_header_format(header_lines: list[str]) -> str | None:
    """evt2/evt3/dat from the '% key value' lines of a Prophesee header, or None."""
    keys = {}
    for line in header_lines:
        body = line[1:].strip()
        key, _, value = body.partition(" ")
        keys.setdefault(key.lower(), value.strip())
    if "evt" in keys:
        version = keys["evt"].strip()
        # EVT 2.1 is a different, 64-bit encoding, so match versions exactly.
        if version in ("2.0", "2"):
            return "evt2"
        if version in ("3.0", "3"):
            return "evt3"
        return "raw-EVT " + version
    if "format" in keys:
        name = keys["format"].split(";")[0].strip().upper()
        if name in ("EVT2", "EVT20", "EVT 2.0"):  # "EVT21" is EVT 2.1
            return "evt2"
        if name in ("EVT3", "EVT30", "EVT 3.0"):
            return "evt3"
        return "raw-" + name
    if "version" in keys or any("data file containing" in line.lower() for line in header_lines):
        return "dat"
    return None


def read_prophesee_header_lines(data: bytes) -> list[str]:
    lines = []
    pos = 0
    while pos < len(data) and data[pos:pos + 1] == b"%":
        end = data.find(b"\n", pos)
        if end < 0:
            break
        line = data[pos:end].decode("latin-1").rstrip("\r")
        lines.append(line)
        pos = end + 1
        if line.strip().lower() == "% end":
            break
    return lines


def detect_format(path) -> str:
    """The format name of a file (one of FORMATS), or EventFormatError naming the known ones."""
    path = check_readable_file(path)
    with open(path, "rb") as f:
        head = f.read(PROBE_BYTES)
    if not head:
        raise EventFormatError(path, "file is empty", offset=0)
    if looks_like_hdf5(head):
        return "hdf5"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"#!AER-DAT2"):
        return "aedat2"
    if head.startswith(b"#!AER-DAT"):
        version = head[9:13].split(b"\r")[0].split(b"\n")[0].decode("latin-1", "replace")
        raise EventFormatError(path, f"AEDAT version {version} is not supported; "
                                     f"known formats: {known_formats_text()}", offset=0)
    if head.startswith(b"%"):
        found = prophesee_header_format(read_prophesee_header_lines(head))
        if found is None and path.suffix.lower() == ".dat":
            found = "dat"
        if found is None and path.suffix.lower() == ".raw":
            raise EventFormatError(path, "Prophesee RAW header has no '% evt' or '% format' line, "
                                         "so the event encoding is unknown", offset=0)
        if found is not None and found.startswith("raw-"):
            raise EventFormatError(path, f"Prophesee RAW encoding {found[4:]!r} is not supported "
                                         "(EVT 2.0 and EVT 3.0 are)", offset=0)
        if found is not None:
            return found
    by_extension = _EXTENSIONS.get(path.suffix.lower())
    if by_extension == "atis_bin":
        return by_extension
    if by_extension is not None:
        raise EventFormatError(path, f"extension says {FORMAT_DESCRIPTIONS[by_extension]}, "
                                     "but the content does not start like one", offset=0)
    raise EventFormatError(path, f"unknown event file format (neither the content nor the extension "
                                 f"{path.suffix or '(none)'!r} identifies it); known formats: {known_formats_text()}",
                           offset=0)
