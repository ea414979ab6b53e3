"""Training behind ``streamsnn train``: bin (and cache) a dataset, train with TET + STR/RCS, save a checkpoint.

Single process by default; under ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1
in the environment) it trains data-parallel with DistributedDataParallel:
gloo on CPU, NCCL on GPU. Rank 0 builds the frame cache, writes the
checkpoint and prints; the others wait at a barrier.
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from ..cutoff import ConfidenceCutoff, TopKCutoff, evaluate_policy, per_timestep_accuracy
from ..errors import ConfigError
from ..snn import build_model
from ..snn.checkpoint import save_checkpoint
from .loop import TrainConfig, fit, predict, seed_everything
# The cutoff stored in the checkpoint: the largest epsilon of the sweep whose accuracy on the training
# split (no augmentation) is at most 0.5 points below full T -- the accuracy budget of the paper
# (0.50-0.64 % drop).
CUTOFF_MAX_DROP = 0.005
DEFAULT_THREADS = 2


def configure_threads() -> int:
    """At most DEFAULT_THREADS torch threads unless OMP_NUM_THREADS / STREAMSNN_THREADS says otherwise."""
    env = os.environ.get("STREAMSNN_THREADS") or os.environ.get("OMP_NUM_THREADS")
    n = int(env) if env else min(DEFAULT_THREADS, torch.get_num_threads())
    torch.set_num_threads(max(1, n))
    return n


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
        return torch.device("cuda", local_rank if name == "cuda" else torch.device(name).index)
    if name != "cpu":
        raise ConfigError(f"--device must be cpu or cuda[:N], got {name!r}")
    return torch.device("cpu")


def sensor_size_for(model_name: str, input_size=None):
    """(width, height, polarities) the binner uses for a model: its input size (C, H, W) reversed."""
    c, h, w = input_size if input_size is not None else build_model(model_name).input_size
    return (int(w), int(h), int(c))


def init_distributed(device_name: str | None):
    """Start torch.distributed when launched by torchrun; returns (rank, world, local_rank, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world, local_rank, device


def calibrate_cutoff(train_logits, train_labels) -> dict:
    """The cutoff setting stored in the checkpoint (see CUTOFF_MAX_DROP)."""
    conf = ConfidenceCutoff.calibrate(train_logits, train_labels, max_drop=CUTOFF_MAX_DROP)
    topk = TopKCutoff.calibrate(train_logits, train_labels, quantile=1.0)
    return {"policy": "confidence", "epsilon": conf.epsilon, "max_drop_on_train": CUTOFF_MAX_DROP,
            "topk_betas": topk.betas.tolist()}


def _open_frames(cfg: TrainConfig, data, split: str, cache, progress: bool, build: bool, download: bool = False,
                 test_files=None, sensor_size=None):
    """(DatasetSplit, FrameCache) of one split; ``build=False`` only opens a cache another rank built."""
    from ..datasets import open_dataset
    from .data import FrameCache, build_frame_cache, frame_cache_path

    ds = open_dataset(cfg.dataset, data, split, sensor_size=sensor_size, split_seed=cfg.split_seed,
                      test_files=test_files, download=download)
    if build:
        path = build_frame_cache(ds, cfg.time_window, cfg.timesteps, cache, progress=progress)
    else:
        path = frame_cache_path(ds, cfg.time_window, cfg.timesteps, cache)
    return ds, FrameCache(path)


def model_geometry(cfg: TrainConfig, sensor_size):
    """The model's input size (C, H, W): the sensor's, or ``cfg.input_hw`` when the frames are resized."""
    w, h, p = (int(v) for v in sensor_size)
    hw = cfg.input_hw if cfg.input_hw is not None else (h, w)
    return (p, int(hw[0]), int(hw[1]))


def train(data, out, cfg: TrainConfig, cache=None, device=None, progress=True, command=None,
          log=print, report_test=True, download=False) -> dict:
    """Train one model on the ``cfg.dataset`` found under ``data`` and write the checkpoint ``out``.

    The frames stay in the HDF5 cache and are read by batch. Returns the checkpoint's meta (plus,
    when the dataset has a Test split and this is rank 0, ``test_accuracy`` at full T)."""
    rank, world, _, device = init_distributed(device)
    quiet = (lambda *a, **k: None)
    say = log if rank == 0 else quiet
    cfg.validate()
    build_model(cfg.model)  # unknown names fail before any binning
    # A folder of samples (the N-MNIST layout) is binned at the model's own size.
    folder_sensor = sensor_size_for(cfg.model) if cfg.dataset == "nmnist" else None
    caches = []
    try:
        t0 = time.perf_counter()
        if rank == 0:
            ds, frames = _open_frames(cfg, data, "Train", cache, progress, True, download, sensor_size=folder_sensor)
        if world > 1:
            dist.barrier()
        if rank != 0:
            ds, frames = _open_frames(cfg, data, "Train", cache, False, False, sensor_size=folder_sensor)
        caches.append(frames)
        labels, classes, sensor = frames.labels, ds.class_names, tuple(ds.sensor_size)
        input_size = model_geometry(cfg, sensor)
        say(f"frames: {len(frames)} training samples of {cfg.dataset} x {cfg.timesteps} x {tuple(frames.shape[2:])} "
            f"({time.perf_counter() - t0:.1f} s, cache {frames.path})")
        seed_everything(cfg.seed)
        model = build_model(cfg.model, input_size, len(classes))
        say(f"model {cfg.model} (input {input_size}): {sum(p.numel() for p in model.parameters())} parameters; "
            f"reg {cfg.reg} (strength {cfg.strength():g}), T = {cfg.timesteps}, {cfg.epochs} epochs, "
            f"{cfg.optimizer} lr {cfg.lr:g}" + (f", {world} processes (DDP)" if world > 1 else ""))
        t1 = time.perf_counter()
        history = fit(model, frames, labels, cfg, device=device, progress=progress, log=say)
        train_seconds = time.perf_counter() - t1
        meta = None
        if rank == 0:
            train_logits = predict(model, frames, cfg.timesteps, device=device)
            cutoff = calibrate_cutoff(train_logits, labels)
            resized = tuple(input_size[1:]) != (sensor[1], sensor[0])
            meta = {
                "model": cfg.model,
                "input_size": list(model.input_size),
                "num_classes": len(classes),
                "class_names": list(classes),
                "sensor_size": list(sensor),
                "dataset": {"name": cfg.dataset, "split": ds.split_info},
                "binning": {"time_window": float(cfg.time_window), "start": "first event",
                            "include_incomplete": True,
                            "preprocess": "float32 counts (frames_to_input)"
                            + (f", resized to {input_size[1]}x{input_size[2]} (resize_input)" if resized else "")},
                "timesteps": cfg.timesteps,
                "max_timesteps": cfg.timesteps,
                "cutoff": cutoff,
                "reg": cfg.reg,
                "reg_strength": cfg.strength(),
                "str_variant": cfg.str_variant if cfg.reg == "str" else None,
                "seed": cfg.seed,
                "train_config": cfg.as_meta(),
                "train_accuracy": per_timestep_accuracy(train_logits, labels)[-1],
                "train_seconds": round(train_seconds, 1),
                "world_size": world,
                "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.items()},
                "command": command or "",
                "streamsnn_version": __import__("streamsnn").__version__,
            }
            say(f"trained in {train_seconds:.0f} s; training accuracy at T: {meta['train_accuracy']:.4f}; "
                f"cutoff epsilon {cutoff['epsilon']:g}")
            if report_test:
                test = _test_frames(cfg, data, cache, progress, ds.split_info, folder_sensor)
                if test is not None:
                    caches.append(test)
                    test_logits = predict(model, test, cfg.timesteps, device=device)
                    meta["test_accuracy"] = per_timestep_accuracy(test_logits, test.labels)[-1]
                    r = evaluate_policy(ConfidenceCutoff(cutoff["epsilon"]), test_logits, test.labels)
                    meta["test_cutoff"] = {"accuracy": r["accuracy"], "mean_timesteps": r["mean_timesteps"]}
                    say(f"Test: accuracy at T = {meta['test_accuracy']:.4f}; with the cutoff "
                        f"{r['accuracy']:.4f} at {r['mean_timesteps']:.2f} mean timesteps")
            save_checkpoint(out, model, meta)
            say(f"checkpoint written to {out}")
        if world > 1:
            dist.barrier()
        return meta
    finally:
        for c in caches:
            c.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _test_frames(cfg, data, cache, progress, split_info, folder_sensor):
    """The Test split's FrameCache, or None for a folder without Test/ (training on Train alone)."""
    from ..errors import EventFormatError

    try:
        _, frames = _open_frames(cfg, data, "Test", cache, progress, True, test_files=split_info.get("test_files"),
                                 sensor_size=folder_sensor)
    except EventFormatError:
        if cfg.dataset == "nmnist":
            return None
        raise
    return frames
