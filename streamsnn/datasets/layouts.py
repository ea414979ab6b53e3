"""Open a dataset split by name from the folder a user has: the registry of the tonic layouts.

``open_dataset("cifar10dvs", ROOT, "Train")`` accepts ROOT as tonic's ``save_to`` folder (holding
``CIFAR10DVS/``) or the dataset folder itself, reads the files directly (no archive, no minimum count,
no network), and applies the field's split. ``download=True`` fetches the dataset with tonic when the
layout is not found under ROOT.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, EventFormatError
from . import cifar10dvs, dvsgesture, ncaltech101, nmnist
from .base import DatasetSplit, LabelledFile
from .splits import TEST_FRACTION, stratified_split

DATASETS = {m.NAME: m for m in (nmnist, dvsgesture, cifar10dvs, ncaltech101)}
# Datasets without an official split: the seeded, stratified 9:1 split, stored with the checkpoint.
HOLDOUT = {cifar10dvs.NAME, ncaltech101.NAME}
SPLITS = ("Train", "Test")

__all__ = ["DATASETS", "HOLDOUT", "DatasetSplit", "LabelledFile", "open_dataset", "dataset_base"]


def _module(name: str):
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def dataset_base(name: str, root, download: bool = False) -> Path:
    """The folder under ``root`` holding the dataset's layout; downloaded with tonic when asked and absent."""
    module = _module(name)
    root = Path(root).expanduser()
    base = module.locate(root) if root.is_dir() else None
    if base is None and download:
        try:
            module.tonic_download(root)
        except Exception as exc:  # tonic raises whatever urllib / zipfile / its md5 check raise
            raise ConfigError(f"{root}: downloading {module.TONIC_NAME} with tonic failed ({_one_line(exc)})") from exc
        base = module.locate(root)
    if base is None:
        if not root.exists():
            raise EventFormatError(root, f"dataset folder does not exist (pass --download to fetch "
                                         f"{module.TONIC_NAME} with tonic)")
        raise EventFormatError(root, f"no {module.TONIC_NAME} layout found; expected {module.LAYOUT}")
    return base


def _split_name(split: str) -> str:
    for known in SPLITS:
        if split.lower() == known.lower():
            return known
    raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def open_dataset(name: str, root, split: str, *, sensor_size=None, split_seed: int = 0, test_files=None,
                 download: bool = False) -> DatasetSplit:
    """One split of a dataset. For CIFAR10-DVS and N-Caltech101, ``test_files`` (relative names, as
    stored in a checkpoint's ``split_info``) fixes the held-out samples; otherwise the stratified 9:1
    split with ``split_seed`` makes them. ``sensor_size`` applies to the N-MNIST folder layout only
    (any sample format, at the model's size)."""
    module = _module(name)
    split = _split_name(split)
    base = dataset_base(name, root, download)
    if name not in HOLDOUT:
        if name == nmnist.NAME and sensor_size is not None:
            return module.open_split(base, split, sensor_size)
        return module.open_split(base, split)
    everything = module.list_all(base)
    names = everything.relative_names()
    if test_files is None:
        train_idx, test_idx = stratified_split(everything.labels, TEST_FRACTION, split_seed)
        test_set = {names[i] for i in test_idx}
    else:
        test_set = set(test_files)
        missing = sorted(test_set.difference(names))
        if missing:
            raise EventFormatError(base / missing[0], f"held-out file of the stored split is missing "
                                                      f"({len(missing)} of {len(test_set)} missing)")
    info = {"rule": f"stratified {round((1 - TEST_FRACTION) * 10)}:{round(TEST_FRACTION * 10)} by class, seeded",
            "seed": int(split_seed), "test_fraction": TEST_FRACTION,
            "test_files": [n for n in names if n in test_set]}
    keep = [f for f, n in zip(everything.files, names) if (n in test_set) == (split == "Test")]
    if not keep:
        raise EventFormatError(base, f"the {split} split is empty ({len(names)} files in all)")
    everything.files, everything.split, everything.split_info = keep, split, info
    return everything
