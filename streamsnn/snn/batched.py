"""Batched single-step inference for many streams: one membrane slot per stream.

The streaming job steps the frames that are ready across its streams as one
batch; offline evaluation steps the samples of a split the same way. Both go
through :class:`BlockStepper`, so a stream's logits never depend on which
other streams share its batch. On the CPU the stepper runs the event-driven
engine (:mod:`~streamsnn.snn.event_engine`: every row by the same float32
operations, whatever else is in the call); for networks with layers that
engine does not run, and on other devices, it runs the model's torch modules
as described below:

* **Slots.** :class:`SlotState` holds every spiking layer's membranes for
  ``capacity`` streams, row ``i`` belonging to slot ``i``. A step gathers the
  rows of the slots being stepped, advances them, and writes them back; idle
  slots are not touched (stepping an idle stream with a zero frame would decay
  its membranes). Slots are handed out and taken back by the caller; the
  state grows when more are needed.
* **Fixed blocks.** Every call into the network has exactly ``block_rows``
  rows (the last block padded with rows of zeros that are thrown away). The
  convolution and matrix kernels of the CPU libraries choose their algorithm,
  and so their rounding, by the number of rows: on oneDNN/MKL one row gives
  other float32 sums than two, and fewer than four rows other sums than four
  or more (measured). With one block shape everywhere, a stream's rows go
  through the same kernels with the same shapes whether it runs alone, with 3
  or with 63 other streams, or offline in :func:`predict_stepwise`; what
  remains -- that a row's result does not depend on its position in the block
  or on the other rows -- holds for these kernels (tested:
  ``tests/test_batched.py``). Four rows, because the per-sample cost is flat
  from 4 to 16 rows on the 2-core target (conv 2->16: 22 vs 16 us a sample,
  conv 16->32: 37 vs 31-43 us) while a lone stream pays for 4 rows, not 16.
* **Exact fast path.** Each spiking layer, with the 2x2 max pooling that
  follows it, is one pass of a Numba kernel (``nogil``: the frame thread bins
  meanwhile) that gives bit for bit the values of
  :func:`~streamsnn.snn.neuron.lif_step` and ``nn.MaxPool2d``: decay * u + I
  as the same two float32 operations; ``u >= theta`` instead of
  ``H(u - theta)`` (the same test: float subtraction keeps the sign); the
  reset as writing 0 (u * 0 = 0 for u >= theta > 0); the max of binary spikes
  as "any spike in the window". Everything else (convolution, batch norm,
  linear) is the model's own module. Inference only: no autograd graph.
"""
from __future__ import annotations

import numba as nb
import numpy as np
import torch
from torch import nn

from .models import LIF, SpikingNet
from .preprocess import frames_to_input, resize_input

BLOCK_ROWS = 4           # torch modules: the block shape fixes their kernels' rounding (see above)
EVENT_BLOCK_ROWS = 16    # event engine: any block gives the same values; see BlockStepper.__init__


def _lif_torch(current: torch.Tensor, u: torch.Tensor, decay: float, threshold: float, pool: bool) -> torch.Tensor:
    """lif_step (and a 2x2 max pool of its spikes) with torch operations, u updated in place."""
    u.mul_(decay).add_(current)
    spikes = u >= threshold
    u.masked_fill_(spikes, 0.0)
    if pool:
        H, W = spikes.shape[2] // 2 * 2, spikes.shape[3] // 2 * 2
        s = spikes[:, :, :H, :W]
        spikes = s[:, :, 0::2, 0::2] | s[:, :, 1::2, 0::2] | s[:, :, 0::2, 1::2] | s[:, :, 1::2, 1::2]
    return spikes.to(torch.float32)


@nb.njit(cache=True, nogil=True)
def _lif_kernel(current, u, decay, threshold, out, pool):
    """One pass over (rows, C, H, W) float32: u = decay * u + I (two float32 roundings, as torch does),
    spike where u >= threshold, reset those to 0; spikes (or their 2x2 OR, floor) written to out."""
    rows, channels, height, width = u.shape
    out[...] = 0.0
    h2 = height // 2
    w2 = width // 2
    for r in range(rows):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    v = u[r, c, y, x] * decay
                    v = v + current[r, c, y, x]
                    if v >= threshold:
                        u[r, c, y, x] = 0.0
                        if pool:
                            if y // 2 < h2 and x // 2 < w2:
                                out[r, c, y // 2, x // 2] = 1.0
                        else:
                            out[r, c, y, x] = 1.0
                    else:
                        u[r, c, y, x] = v


def _lif_numba(current: torch.Tensor, u: torch.Tensor, decay: float, threshold: float, pool: bool) -> torch.Tensor:
    shape = tuple(current.shape)
    if current.dim() == 4 and pool:
        shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    out = torch.empty(shape, dtype=torch.float32)
    cur, mem, spikes = current.numpy(), u.numpy(), out.numpy()
    if cur.ndim != 4:      # (rows, features): the same kernel on (rows, features, 1, 1)
        cur = cur.reshape(cur.shape[0], -1, 1, 1)
        mem = mem.reshape(mem.shape[0], -1, 1, 1)
        spikes = spikes.reshape(spikes.shape[0], -1, 1, 1)
    _lif_kernel(cur, mem, np.float32(decay), np.float32(threshold), spikes, pool and current.dim() == 4)
    return out


class SlotState:
    """Membranes of every spiking layer for ``capacity`` streams (row ``i`` = slot ``i``), plus one
    scratch row that padding rows read from and write to."""

    def __init__(self, layer_shapes: dict[str, tuple], capacity: int, device=None, dtype=torch.float32):
        self.layer_shapes = dict(layer_shapes)
        self.device = device
        self.dtype = dtype
        self.capacity = 0
        self.membranes: dict[str, torch.Tensor] = {}
        # numpy views of CPU membranes (the event engine steps them without a torch call: a torch op gives
        # the GIL up and queues to take it back behind the job's other threads, up to a switch interval)
        self.arrays: list[np.ndarray] = []
        # slots reset since their last step: zeroed by the next step, inside the engine's nogil call or
        # before the torch block (zeroing ~100 kB from Python also gave the GIL up, measured in the job)
        self.stale = np.zeros(1, np.uint8)
        self._free: list[int] = []
        self._grow(max(1, int(capacity)))

    @property
    def scratch(self) -> int:
        return self.capacity

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, shape in self.layer_shapes.items():
            fresh = torch.zeros((capacity + 1, *shape), device=self.device, dtype=self.dtype)
            if old:
                fresh[:old] = self.membranes[name][:old]
            self.membranes[name] = fresh
        self.arrays = ([u.numpy() for u in self.membranes.values()]
                       if torch.device(self.device or "cpu").type == "cpu" else [])
        stale = np.zeros(capacity + 1, np.uint8)
        stale[:old] = self.stale[:old]
        self.stale = stale
        self._free = sorted(set(self._free) | set(range(old, capacity)), reverse=True)
        self.capacity = capacity

    def acquire(self) -> int:
        """A free slot (membranes at 0); the state doubles when none is left."""
        if not self._free:
            self._grow(2 * self.capacity)
        slot = self._free.pop()
        self.reset(slot)
        self.apply_resets([slot])
        return slot

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.capacity or slot in self._free:
            raise ValueError(f"slot {slot} is not in use")
        self._free.append(slot)
        self._free.sort(reverse=True)

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def reset(self, slot: int) -> None:
        """Membranes of one slot back to 0 (a new inference window of that stream), from its next step
        on: :meth:`apply_resets` (the torch blocks) or the event engine zeroes them then."""
        self.stale[slot] = 1

    def apply_resets(self, slots) -> None:
        for slot in slots:
            if self.stale[slot]:
                for u in self.membranes.values():
                    u[slot] = 0.0
                self.stale[slot] = 0


def _is_binary_pool(layer: nn.Module) -> bool:
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    return (isinstance(layer, nn.MaxPool2d) and pair(layer.kernel_size) == (2, 2)
            and pair(layer.stride or layer.kernel_size) == (2, 2) and pair(layer.padding) == (0, 0)
            and pair(layer.dilation) == (1, 1) and not layer.ceil_mode and not layer.return_indices)


class BlockStepper:
    """Steps chosen slots of a :class:`SlotState` by one frame each.

    ``engine``: ``"event"`` runs the whole step of any number of rows as one Numba call
    (:mod:`~streamsnn.snn.event_engine`, CPU); ``"torch"`` runs the model's modules in blocks of
    ``block_rows`` rows (any device, any layer); ``"auto"`` (default) takes ``"event"`` on the CPU
    when the network's layers allow it. Offline evaluation and the streaming job both say
    ``"auto"``, so for a given model and device they step through the same engine.
    ``block_rows`` is also how many rows the scheduler steps before it sends their decisions."""

    def __init__(self, model: SpikingNet, block_rows: int | None = None, engine: str = "auto", frame_size=None,
                 engine_threads: int | None = None):
        """``frame_size`` (P, H, W): the frames' size when it differs from the model's input (a model
        trained on resized frames, such as the 48x48 CIFAR10-DVS VGG on a 128x128 sensor): each step
        resizes them first with :func:`~streamsnn.snn.preprocess.resize_input`, as training did."""
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        if engine not in ("auto", "event", "torch"):
            raise ValueError(f"engine must be auto, event or torch, got {engine!r}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.input_size = tuple(model.input_size)
        self.frame_size = tuple(int(v) for v in frame_size) if frame_size is not None else self.input_size
        if len(self.frame_size) != 3 or self.frame_size[0] != self.input_size[0]:
            raise ValueError(f"frames of size {self.frame_size} cannot feed a model taking {self.input_size}")
        self.num_classes = model.num_classes
        self.event = None
        if engine != "torch" and self.device.type == "cpu":
            from .event_engine import EventEngine, Unsupported
            try:
                self.event = EventEngine(model, threads=engine_threads)
            except Unsupported:
                if engine == "event":
                    raise
        elif engine == "event":
            raise ValueError(f"the event engine runs on the CPU; the model is on {self.device}")
        self.engine = "event" if self.event is not None else "torch"
        # Event engine: a row costs the same alone or with others and its values do not depend on them,
        # so the block only sets how many rows are stepped before their decisions go out. 16, not 8:
        # 16 cameras are then one block, one cutoff test and one round of sends, where two blocks made
        # the second eight wait for the first eight's decisions too (16 streams at speed 1, p99 of the
        # worst stream 4.8-8.5 ms against 7.4-9.9 over alternated runs; at speed 0, 64 streams ~15 %
        # more work a second, fewer cutoff passes).
        self.block_rows = int(block_rows or (EVENT_BLOCK_ROWS if self.event is not None else BLOCK_ROWS))
        self._plan = self._compile(model)
        self.calls = 0          # network calls (blocks) so far
        self.rows = 0           # real (not padding) rows stepped so far

    @staticmethod
    def _compile(model: SpikingNet) -> list[tuple]:
        plan: list[tuple] = []
        after_lif = False
        for name, layer in model.body.named_children():
            if isinstance(layer, LIF):
                plan.append(("lif", name, float(layer.decay), float(layer.threshold)))
                after_lif = True
            elif isinstance(layer, nn.Dropout):
                continue                                  # identity in inference
            elif after_lif and _is_binary_pool(layer) and plan[-1][0] == "lif":
                plan.append(("or_pool", name))            # computed with the spiking layer before it
            else:
                plan.append(("module", name, layer))
                after_lif = False
        return plan

    def init_state(self, capacity: int) -> SlotState:
        shapes = self.event.state_shapes if self.event is not None else self.model.state_shapes
        return SlotState(shapes, capacity, device=self.device)

    @torch.inference_mode()
    def _run_block(self, x: torch.Tensor, membranes: dict[str, torch.Tensor]) -> torch.Tensor:
        h = x
        fused = h.device.type == "cpu"
        plan = self._plan
        i = 0
        while i < len(plan):
            op = plan[i]
            kind = op[0]
            if kind == "lif":
                _, name, decay, threshold = op
                u = membranes[name]
                pool = i + 1 < len(plan) and plan[i + 1][0] == "or_pool"
                if fused:
                    h = _lif_numba(h.contiguous(), u, decay, threshold, pool)
                else:
                    h = _lif_torch(h, u, decay, threshold, pool)
                i += 2 if pool else 1
                continue
            h = op[2](h)
            i += 1
        return h

    def step(self, state: SlotState, slots, frames, split: bool = True) -> np.ndarray:
        """Advance ``slots`` (n distinct slot indices) by one frame each; frames (n, C, H, W) counts
        (int numpy or torch, or float). Returns the logits (n, K) as float32 numpy, row i for slots[i].
        ``split=False`` keeps the event engine's rows on the calling thread (same values)."""
        slots = list(slots)
        n = len(slots)
        if not torch.is_tensor(frames):
            frames = np.asarray(frames)
        if tuple(frames.shape) != (n, *self.frame_size):
            raise ValueError(f"frames have shape {tuple(frames.shape)}, expected ({n}, "
                             f"{', '.join(map(str, self.frame_size))})")
        if self.event is not None:
            array = frames.numpy() if torch.is_tensor(frames) else frames
            if self.frame_size != self.input_size:
                array = resize_input(frames_to_input(array), self.input_size[1:]).numpy()
            if any(not 0 <= s < state.capacity for s in slots) or len(set(slots)) != n:
                raise ValueError(f"slots must be distinct slots of the state (0..{state.capacity - 1}), got {slots}")
            out = self.event.step(state.arrays[0] if state.arrays else state.membranes["neurons"], slots, array,
                                  stale=state.stale, split=split)
            self.calls += 1
            self.rows += n
            return out
        return self._step_torch(state, slots, frames)

    @torch.inference_mode()      # only here: entering it costs a few torch calls, each a GIL hand-over
    def _step_torch(self, state: SlotState, slots: list, frames) -> np.ndarray:
        n = len(slots)
        state.apply_resets(slots)
        x_all = resize_input(frames_to_input(frames, device=self.device), self.input_size[1:])
        out = np.empty((n, self.num_classes), dtype=np.float32)
        B = self.block_rows
        for start in range(0, n, B):
            part = slots[start:start + B]
            real = len(part)
            x = x_all[start:start + real]
            if real < B:
                pad = torch.zeros((B - real, *self.input_size), dtype=x.dtype, device=x.device)
                x = torch.cat([x, pad])
                part = part + [state.scratch] * (B - real)
            index = torch.as_tensor(part, device=self.device)
            block = {name: u.index_select(0, index) for name, u in state.membranes.items()}
            logits = self._run_block(x, block)
            keep = index[:real]
            for name, u in state.membranes.items():
                u.index_copy_(0, keep, block[name][:real])
            out[start:start + real] = logits[:real].cpu().numpy()
            self.calls += 1
            self.rows += real
        return out


def predict_stepwise(model: SpikingNet, frames, timesteps: int, block_rows: int | None = None,
                     engine: str = "auto") -> np.ndarray:
    """Logits (T, N, K) of frames (N, T', P, H, W), first ``timesteps`` frames, computed the way the
    streaming job computes them (:class:`BlockStepper`, same block shape), so offline evaluation and
    the job give the same numbers."""
    # A frame cache on disk (training.data.FrameCache: ``take(indices)`` and ``shape``) is read a chunk at
    # a time; arrays and tensors (whose own ``take`` indexes the flattened data) are used as they are.
    on_disk = hasattr(frames, "take") and not isinstance(frames, np.ndarray) and not torch.is_tensor(frames)
    if not on_disk:
        frames = np.asarray(frames)
    N = frames.shape[0]
    if frames.shape[1] < timesteps:
        raise ValueError(f"frames have {frames.shape[1]} timesteps, {timesteps} asked for")
    stepper = BlockStepper(model, block_rows, engine, frame_size=tuple(frames.shape[2:]))
    out = np.empty((timesteps, N, model.num_classes), dtype=np.float32)
    # samples stepped together: bounded memory for large splits (their membranes, at most ~256 MB: the
    # CIFAR10-DVS VGG holds 0.9 M neurons, 3.7 MB a sample)
    neurons = sum(int(np.prod(shape)) for shape in stepper.init_state(1).layer_shapes.values())
    chunk = max(stepper.block_rows, min(64 * stepper.block_rows, (256 << 20) // (4 * max(1, neurons))))
    for first in range(0, N, chunk):
        rows = list(range(first, min(first + chunk, N)))
        block = frames.take(np.asarray(rows)) if on_disk else frames[first:first + len(rows)]
        state = stepper.init_state(len(rows))
        slots = [state.acquire() for _ in rows]
        for t in range(timesteps):
            out[t, first:first + len(rows)] = stepper.step(state, slots, block[:, t])
    return out
