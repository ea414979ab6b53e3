"""Datasets: the demo data bundled in the package and the public datasets as users have them on disk."""
from __future__ import annotations

from .bundled import bundled_nmnist_root, cache_dir
from .download import download_nmnist

__all__ = ["bundled_nmnist_root", "cache_dir", "download_nmnist"]
