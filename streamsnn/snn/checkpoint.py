"""Checkpoints: weights plus everything the streaming job needs, loadable without executing code.

A checkpoint is a plain dict saved with ``torch.save``::

    {"format": "streamsnn-checkpoint", "version": 1,
     "meta": {...},                    # str / int / float / bool / list / dict only
     "state_dict": {name: tensor}}

and is read back with ``torch.load(weights_only=True)``, which refuses any
pickled object other than tensors and plain containers. ``meta`` holds at least
``model`` (name), ``input_size`` [C, H, W], ``num_classes``; the trainer adds
``class_names``, ``sensor_size``, ``binning`` {"time_window": us, ...},
``timesteps``, ``cutoff`` {"policy": "confidence", "epsilon": ...}, ``reg``,
``seed`` and the training ``command``. A network built from a layer list (an
imported NIR graph) also stores that list as ``layers``, from which it is rebuilt.

:func:`load_checkpoint` also reads a NIR graph file (``.nir``): the job and
``streamsnn eval`` then run a network exported by any NIR tool (see
:mod:`streamsnn.snn.nir_io`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from .models import build_from_layers, build_model

FORMAT = "streamsnn-checkpoint"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where="meta"):
    if isinstance(value, _PLAIN):
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{where} is {value}; checkpoint metadata must be finite")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} has a non-string key {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where} holds a {type(value).__name__}; checkpoint metadata must be plain "
                          "str/int/float/bool/list/dict values")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_checkpoint(path, model, meta: dict | None = None) -> Path:
    """Write ``model``'s weights and ``meta`` (model name, input size and classes are filled in) to path.

    Written to a temporary file first and renamed, so a crash never leaves half a checkpoint."""
    path = Path(path)
    if hasattr(model, "module"):  # DDP wrapper
        model = model.module
    full = dict(_plain(meta or {}))
    full.update(model=model.model_name, input_size=list(model.input_size), num_classes=model.num_classes)
    if getattr(model, "layer_spec", None):
        full["layers"] = _plain(model.layer_spec)
    _check_plain(full)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "meta": full, "state_dict": state}
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def write_atomically(path, write) -> Path:
    """``write(tmp_path)`` then rename to ``path``, so a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint or a NIR graph file -> (model in eval mode, meta).

    Any problem raises CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    from .nir_io import is_nir_file, read_nir

    if is_nir_file(path):
        model, meta = read_nir(path)
        return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), meta
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, pickle that needs code, truncated file ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable streamsnn checkpoint ({first[:300]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a streamsnn checkpoint (no '{FORMAT}' format marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}, this streamsnn reads "
                              f"version {VERSION}")
    meta, state = payload.get("meta"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its 'meta' or 'state_dict' entry")
    for key in ("model", "input_size", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r}")
    try:
        if "layers" in meta:
            model = build_from_layers(meta["layers"], meta["input_size"], meta["num_classes"], meta["model"])
        else:
            model = build_model(meta["model"], meta["input_size"], meta["num_classes"])
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot build model {meta['model']!r} from the checkpoint: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {meta['model']!r}: "
                              f"{str(exc).splitlines()[0]}") from exc
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    return model, meta


BUNDLED = {"nmnist_str": "nmnist_str.pt"}


def bundled_checkpoint(name: str = "nmnist_str") -> Path:
    """Path of a checkpoint shipped inside the package (streamsnn/checkpoints/)."""
    try:
        filename = BUNDLED[name]
    except KeyError:
        raise CheckpointError(f"no bundled checkpoint {name!r}; bundled: {', '.join(BUNDLED)}") from None
    path = Path(__file__).resolve().parents[1] / "checkpoints" / filename
    if not path.is_file():
        raise CheckpointError(f"{path}: the bundled checkpoint {name!r} is missing from this installation")
    return path
