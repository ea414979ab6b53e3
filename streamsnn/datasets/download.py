"""Fetching the full public datasets through tonic, where the machine has a network."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError


def download_nmnist(directory: str | os.PathLike, *, train: bool = False) -> Path:
    """Download and extract N-MNIST with tonic into ``directory``; returns the root holding Test/ (Train/).

    tonic puts the extracted archive under ``directory/NMNIST``; a copy that is already complete
    there is used as it is. Without a network this fails with one line naming the folder and why.
    """
    directory = Path(directory).expanduser()
    try:
        from tonic.datasets import NMNIST
    except ImportError as exc:
        raise DatasetError(f"{directory}: downloading N-MNIST needs tonic, an optional extra (GPL-3.0): "
                           "pip install 'streamsnn[tonic]'") from exc
    try:
        NMNIST(save_to=str(directory), train=train)
    except Exception as exc:   # urllib, socket, zip and hash errors all end the same way for the user
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(f"{directory}: could not download N-MNIST through tonic ({reason}); "
                           "without a network, extract the official archive to "
                           "DIR/Test/<digit>/<sample>.bin and pass --data DIR") from exc
    root = directory / NMNIST.__name__
    split = "Train" if train else "Test"
    if not (root / split).is_dir():
        raise DatasetError(f"{root}: tonic reported the N-MNIST download complete but there is no {split}/ "
                           "folder in it; remove the folder and try again")
    return root
