"""The training loop proper: TET + regulariser, Adam or SGD, cosine schedule to 0, optional DDP,
bf16 mixed precision on CUDA.

Kept apart from the command-line front end (trainer.py) so that tools and
tests can train on arrays directly. Frames come as an array or a
:class:`~streamsnn.training.data.FrameCache`; either way only the current batch is turned into
float input (translated at the sensor's resolution, then resized to the model's input).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..snn import frames_to_input, resize_input
from .data import frame_source
from .losses import DEFAULT_STRENGTH, STR_DEFAULT_VARIANT, STR_VARIANTS, regulariser, tet_loss


OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainConfig:
    """Everything one training run depends on (defaults: the README's N-MNIST recipe; the named
    recipes of :mod:`streamsnn.training.recipes` set the rest per dataset)."""

    model: str = "nmnist"
    timesteps: int = 10
    time_window: float = 30_000.0
    reg: str = "str"
    reg_strength: float | None = None
    str_variant: str = STR_DEFAULT_VARIANT
    epochs: int = 25
    batch_size: int = 32
    lr: float = 5e-3
    weight_decay: float = 0.0
    shift: int = 1          # random translation augmentation, pixels (same shift for all frames of a sample)
    seed: int = 0
    dataset: str = "nmnist"
    recipe: str = "nmnist"
    optimizer: str = "adam"
    momentum: float = 0.0   # SGD only
    input_hw: tuple | None = None  # model input (H, W) when smaller than the sensor; frames are resized
    split_seed: int = 0     # the held-out split of datasets without an official one
    amp: bool = True        # bf16 autocast on CUDA (ignored on CPU)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.timesteps < 1:
            raise ConfigError(f"timesteps must be >= 1, got {self.timesteps}")
        if self.time_window <= 0:
            raise ConfigError(f"time window must be > 0 us, got {self.time_window}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch size must be >= 1 and lr > 0")
        if self.reg not in DEFAULT_STRENGTH:
            raise ConfigError(f"regulariser must be one of {', '.join(DEFAULT_STRENGTH)}, got {self.reg!r}")
        if self.str_variant not in STR_VARIANTS:
            raise ConfigError(f"STR variant must be one of {', '.join(STR_VARIANTS)}, got {self.str_variant!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.input_hw is not None:
            self.input_hw = tuple(int(v) for v in self.input_hw)
            if len(self.input_hw) != 2 or min(self.input_hw) < 1:
                raise ConfigError(f"input size must be (H, W) >= 1, got {self.input_hw}")

    def strength(self) -> float:
        return float(DEFAULT_STRENGTH[self.reg] if self.reg_strength is None else self.reg_strength)

    def as_meta(self) -> dict:
        d = asdict(self)
        d["reg_strength"] = self.strength()
        return d


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """x (N, T, C, H, W): translate each sample by an integer (dy, dx) in [-shift, shift], zero fill."""
    if shift <= 0:
        return x
    N, _, _, H, W = x.shape
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    offs = torch.randint(0, 2 * shift + 1, (N, 2), generator=generator)
    out = torch.empty_like(x)
    for i in range(N):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, :, dy:dy + H, dx:dx + W]
    return out


def fit(model, frames, labels, cfg: TrainConfig, device="cpu", progress: bool = True, log=None,
        max_steps: int | None = None):
    """Train ``model`` on frames (N, T, P, H, W) int counts and labels (N,). Returns a history dict.

    Under torch.distributed (initialised by the caller) each rank takes its shard of every epoch's
    permutation (the same permutation on every rank), the per-rank batch is batch_size / world size,
    and DDP averages the gradients, so the weights stay identical across ranks.
    """
    rank, world = _world()
    strength = cfg.strength()
    frames = frame_source(frames)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    T = cfg.timesteps
    if frames.shape[1] < T:
        raise ValueError(f"frames have {frames.shape[1]} timesteps, training needs T = {T}")
    n = frames.shape[0]
    per_rank = max(1, cfg.batch_size // world)
    steps_per_epoch = max(1, n // (per_rank * world))
    total_steps = steps_per_epoch * cfg.epochs if max_steps is None else max_steps

    model.to(device)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if getattr(device, "type", "cpu") == "cuda" else None)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    on_cuda = torch.device(device).type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.amp and on_cuda \
        else contextlib.nullcontext
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + rank)
    history = {"epoch": [], "loss": [], "reg": [], "train_accuracy": [], "seconds": []}
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
    step = 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss = tot_reg = 0.0
        correct = seen = 0
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = perm[b * per_rank * world:(b + 1) * per_rank * world][rank::world]
            xb = frames_to_input(frames.take(idx.numpy())[:, :T])
            xb = random_shift(xb, cfg.shift, aug_gen)
            xb = resize_input(xb, model.input_size[1:]).transpose(0, 1).contiguous().to(device)  # (T, N, ...)
            yb = labels[idx].to(device)
            need_traces = cfg.reg != "none"
            with autocast():
                out = net(xb, return_traces=need_traces)
                logits, traces = out if need_traces else (out, None)
                logits = logits.float()
                loss = tet_loss(logits, yb)
                reg_value = torch.zeros((), device=device)
                if need_traces and strength > 0:
                    reg_value = regulariser(cfg.reg, traces, logits, yb, cfg.str_variant)
                    loss = loss + strength * reg_value
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot_loss += float(loss.detach()) * len(idx)
            tot_reg += float(reg_value.detach()) * len(idx)
            correct += int((logits.detach().sum(0).argmax(-1) == yb).sum())
            seen += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
                bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}",
                                reg=f"{tot_reg / seen:.3f}")
        history["epoch"].append(epoch + 1)
        history["loss"].append(tot_loss / max(seen, 1))
        history["reg"].append(tot_reg / max(seen, 1))
        history["train_accuracy"].append(correct / max(seen, 1))
        history["seconds"].append(time.perf_counter() - start)
        if log is not None and rank == 0:
            log(f"epoch {epoch + 1}: loss {history['loss'][-1]:.4f} reg {history['reg'][-1]:.4f} "
                f"train acc {history['train_accuracy'][-1]:.4f} ({history['seconds'][-1]:.0f} s)")
        if step >= total_steps:
            break
    if bar is not None:
        bar.close()
    if world > 1:
        sync_buffers(model, world)
    model.eval()
    return history


@torch.no_grad()
def sync_buffers(model, world: int) -> None:
    """Average the floating-point buffers (batch-norm running statistics) over the ranks, so that every
    rank ends with the same model (DDP keeps parameters in step, buffers only per forward)."""
    for buf in model.buffers():
        if buf.dtype.is_floating_point:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)


@torch.no_grad()
def predict(model, frames, timesteps: int, batch_size: int = 100, device="cpu") -> np.ndarray:
    """Logits (T, N, K) of an eval-mode model over frames (N, T', P, H, W) (an array or a FrameCache),
    first ``timesteps`` frames, in float32 (the decisions the streaming job makes)."""
    model.eval().to(device)
    outs = []
    frames = frame_source(frames)
    for i in range(0, frames.shape[0], batch_size):
        x = frames_to_input(frames.take(np.arange(i, min(i + batch_size, frames.shape[0])))[:, :timesteps])
        x = resize_input(x, model.input_size[1:]).transpose(0, 1).contiguous().to(device)
        outs.append(model(x).cpu())
    return torch.cat(outs, dim=1).numpy()
