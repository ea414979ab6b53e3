"""The demo data that ships inside the package: the first 100 samples of N-MNIST's Test split.

N-MNIST: G. Orchard, A. Jayawant, G. K. Cohen and N. Thakor, "Converting Static Image
Datasets to Spiking Neuromorphic Datasets Using Saccades", Frontiers in Neuroscience 9:437
(2015), released under CC BY-SA 4.0 (see ``data/NMNIST-LICENSE.md``). The full dataset (60,000
Train, 10,000 Test samples) is at https://www.garrickorchard.com/datasets/n-mnist and is what
``streamsnn demo --download DIR`` fetches through tonic.

The archive holds the original ATIS ``.bin`` files, byte for byte, as ``Test/<digit>/<index>.bin``
(LZMA zip, 1.2 MB). Every stage of streamsnn (the folder source, training, evaluation) reads
sample folders from disk with the project's own readers, so the archive is extracted once into a
cache folder and used from there: ``$STREAMSNN_CACHE``, else ``$XDG_CACHE_HOME/streamsnn``, else
``~/.cache/streamsnn``. The folder name carries a digest of the archive, so a new release never
reads a stale copy, and the extraction is renamed into place only when complete, so an
interrupted or concurrent first run never leaves a half-filled folder behind.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import DatasetError

ARCHIVE = Path(__file__).with_name("data") / "nmnist_test100.zip"
LICENSE_FILE = ARCHIVE.with_name("NMNIST-LICENSE.md")
SAMPLES = 100
SENSOR_SIZE = (34, 34, 2)
# Only these names may come out of the archive: no absolute paths, no "..", no surprises.
_MEMBER = re.compile(r"Test/[0-9]/[0-9]{5}\.bin")


def cache_dir() -> Path:
    """Where streamsnn keeps files it derives from package data (never the working directory)."""
    if os.environ.get("STREAMSNN_CACHE"):
        return Path(os.environ["STREAMSNN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "streamsnn"


def _archive_digest() -> str:
    digest = hashlib.sha256()
    with open(ARCHIVE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def bundled_nmnist_root(cache: str | os.PathLike | None = None) -> Path:
    """The bundled N-MNIST root (it holds ``Test/<digit>/<index>.bin``), extracted on first use."""
    if not ARCHIVE.is_file():
        raise DatasetError(f"{ARCHIVE}: the bundled N-MNIST archive is missing from this installation "
                           "(reinstall streamsnn, or pass --data DIR with N-MNIST on disk)")
    base = Path(cache) if cache is not None else cache_dir()
    root = base / f"nmnist_test100-{_archive_digest()}"
    if (root / "Test").is_dir():
        return root
    try:
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".nmnist_test100-", dir=base))
    except OSError as exc:
        raise DatasetError(f"{base}: cannot create the cache folder for the bundled N-MNIST split ({exc}); "
                           "set STREAMSNN_CACHE to a writable folder") from exc
    try:
        _extract(staging)
        try:
            staging.rename(root)
        except OSError:
            if not (root / "Test").is_dir():   # not a concurrent first run that won the rename
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _extract(target: Path) -> None:
    try:
        with zipfile.ZipFile(ARCHIVE) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            bad = [m.filename for m in members if not _MEMBER.fullmatch(m.filename)]
            if bad or len(members) != SAMPLES:
                raise DatasetError(f"{ARCHIVE}: expected {SAMPLES} files named Test/<digit>/<index>.bin, "
                                   f"found {len(members)} ({', '.join(bad[:3]) or 'names fine'})")
            for member in members:
                path = target / member.filename
                path.parent.mkdir(parents=True, exist_ok=True)
                # ZipFile.read checks each member's CRC-32, so a damaged archive fails here.
                path.write_bytes(archive.read(member))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DatasetError(f"{ARCHIVE}: cannot extract the bundled N-MNIST split: {exc}") from exc
