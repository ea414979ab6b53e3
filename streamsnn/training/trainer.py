"""Training behind ``streamsnn train``: bin (and cache) a dataset, train with TET + STR/RCS, save a checkpoint.

Single process by default; under ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1
in the environment) it trains data-parallel with DistributedDataParallel:
gloo on CPU, NCCL on GPU. Rank 0 builds the frame cache, writes the
checkpoint and prints; the others wait at a barrier.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..cutoff import ConfidenceCutoff, TopKCutoff, evaluate_policy, per_timestep_accuracy
from ..errors import ConfigError
from ..snn import build_model
from ..snn.checkpoint import save_checkpoint
from .loop import TrainConfig, fit, predict, seed_everything

# The README recipe: `streamsnn train --data DIR --model nmnist --reg str --out CKPT.pt`.
# 25 epochs: at 15 the compact network still underfits (97-98 % on Train, 94 % Test for seed 0).
RECIPE = {"epochs": 25, "batch_size": 32, "lr": 5e-3}
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


def train(data, out, cfg: TrainConfig, cache=None, device=None, progress=True, command=None,
          log=print, report_test=True) -> dict:
    """Train one model on ``data`` (N-MNIST archive layout) and write the checkpoint ``out``.

    Returns the checkpoint's meta (plus, when the dataset has a Test split and this is rank 0,
    ``test_accuracy`` at full T)."""
    from .data import load_split, resolve_dataset

    rank, world, _, device = init_distributed(device)
    quiet = (lambda *a, **k: None)
    say = log if rank == 0 else quiet
    try:
        root = resolve_dataset(data, download=(rank == 0))
        model_probe = build_model(cfg.model)
        sensor = sensor_size_for(cfg.model)
        t0 = time.perf_counter()
        if rank == 0:
            frames, labels, classes, cache_path = load_split(root, "Train", sensor, cfg.time_window, cfg.timesteps,
                                                              cache, progress=progress)
        if world > 1:
            dist.barrier()
        if rank != 0:
            frames, labels, classes, cache_path = load_split(root, "Train", sensor, cfg.time_window,
                                                              cfg.timesteps, cache, progress=False)
        say(f"frames: {frames.shape[0]} training samples x {cfg.timesteps} x {tuple(frames.shape[2:])} "
            f"({time.perf_counter() - t0:.1f} s, cache {cache_path})")
        seed_everything(cfg.seed)
        model = build_model(cfg.model, model_probe.input_size, len(classes))
        say(f"model {cfg.model}: {sum(p.numel() for p in model.parameters())} parameters; reg {cfg.reg} "
            f"(strength {cfg.strength():g}), T = {cfg.timesteps}, {cfg.epochs} epochs"
            + (f", {world} processes (DDP)" if world > 1 else ""))
        t1 = time.perf_counter()
        history = fit(model, frames, labels, cfg, device=device, progress=progress, log=say)
        train_seconds = time.perf_counter() - t1
        meta = None
        if rank == 0:
            train_logits = predict(model, frames, cfg.timesteps, device=device)
            cutoff = calibrate_cutoff(train_logits, labels)
            meta = {
                "model": cfg.model,
                "input_size": list(model.input_size),
                "num_classes": len(classes),
                "class_names": list(classes),
                "sensor_size": list(sensor),
                "binning": {"time_window": float(cfg.time_window), "start": "first event",
                            "include_incomplete": True, "preprocess": "float32 counts (frames_to_input)"},
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
            if report_test and (Path(root) / "Test").is_dir():
                tf, tl, _, _ = load_split(root, "Test", sensor, cfg.time_window, cfg.timesteps, cache,
                                          progress=progress)
                test_logits = predict(model, tf, cfg.timesteps, device=device)
                meta["test_accuracy"] = per_timestep_accuracy(test_logits, tl)[-1]
                r = evaluate_policy(ConfidenceCutoff(cutoff["epsilon"]), test_logits, tl)
                meta["test_cutoff"] = {"accuracy": r["accuracy"], "mean_timesteps": r["mean_timesteps"]}
                say(f"Test: accuracy at T = {meta['test_accuracy']:.4f}; with the cutoff "
                    f"{r['accuracy']:.4f} at {r['mean_timesteps']:.2f} mean timesteps")
            save_checkpoint(out, model, meta)
            say(f"checkpoint written to {out}")
        if world > 1:
            dist.barrier()
        return meta
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
