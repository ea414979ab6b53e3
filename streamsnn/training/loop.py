"""The training loop proper: TET + regulariser, Adam, cosine schedule, optional DDP.

Kept apart from the command-line front end (trainer.py) so that tools and
tests can train on arrays directly.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ..snn import frames_to_input
from .losses import DEFAULT_STRENGTH, STR_DEFAULT_VARIANT, regulariser, tet_loss


@dataclass
class TrainConfig:
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
    extra: dict = field(default_factory=dict)

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
    frames = torch.as_tensor(np.asarray(frames))
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    T = cfg.timesteps
    if frames.shape[1] < T:
        raise ValueError(f"frames have {frames.shape[1]} timesteps, training needs T = {T}")
    frames = frames[:, :T]
    n = frames.shape[0]
    per_rank = max(1, cfg.batch_size // world)
    steps_per_epoch = max(1, n // (per_rank * world))
    total_steps = steps_per_epoch * cfg.epochs if max_steps is None else max_steps

    model.to(device)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if getattr(device, "type", "cpu") == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            xb = frames_to_input(frames[idx])
            xb = random_shift(xb, cfg.shift, aug_gen).transpose(0, 1).contiguous().to(device)  # (T, N, ...)
            yb = labels[idx].to(device)
            need_traces = cfg.reg != "none"
            out = net(xb, return_traces=need_traces)
            logits, traces = out if need_traces else (out, None)
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
    """Logits (T, N, K) of an eval-mode model over frames (N, T', P, H, W), first ``timesteps`` frames."""
    model.eval().to(device)
    outs = []
    frames = torch.as_tensor(np.asarray(frames))[:, :timesteps]
    for i in range(0, frames.shape[0], batch_size):
        x = frames_to_input(frames[i:i + batch_size]).transpose(0, 1).contiguous().to(device)
        outs.append(model(x).cpu())
    return torch.cat(outs, dim=1).numpy()
