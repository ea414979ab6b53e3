"""Event-driven CPU inference: one network step for a whole batch of streams in one Numba call.

Why not the torch modules. In the streaming job a step of the torch network
is about fifteen operator calls, and each gives the GIL up and must take it
back; with dozens of source threads runnable, every retake waits for
another thread's turn. Measured with 16 streams on 2 cores: a block of 4 rows
that takes 1.0 ms alone took 2-8 ms inside the job, and that, not the
arithmetic, made the latency. Here a step is one ``nogil`` call, whatever the
number of rows and layers.

Why event-driven. After the first layer the activations are spikes (0 or 1,
most of them 0) and the input frames are event counts, mostly 0. Each layer
therefore scatters only its nonzero inputs: a convolution adds ``v * W[:, c,
ky, kx]`` to the outputs an input touches, a linear layer adds ``v * W[:, j]``.
Maps are kept channel-last (H, W, C) so that those additions run over
contiguous output channels (vectorised). On the N-MNIST network this is
about 5x less work per row than the dense torch kernels.

Exactness. A row's logits come from a fixed sequence of float32 operations
that reads only that row (its frame and its membranes): they do not depend on
which other rows share the call, on their number or on their order. The
streaming job and offline evaluation (:func:`~streamsnn.snn.batched.predict_stepwise`)
both step through this engine, so their decisions are equal by construction.
The values differ from the torch modules' in the last bits (another order of
the same sums); the tests bound the difference.

Supported layers: Conv2d (groups 1, dilation 1, zero padding given as
numbers), BatchNorm1d/2d (inference statistics), LIF, MaxPool2d / AvgPool2d
(no padding, floor mode), Flatten, Linear, Dropout and Identity. A network
with anything else runs on the torch modules (:class:`Unsupported` names the layer).
"""
from __future__ import annotations

import numba as nb
import numpy as np
import torch
from torch import nn

from .models import LIF, SpikingNet

OP_INPUT, OP_CONV, OP_AFFINE, OP_LIF, OP_MAXPOOL, OP_AVGPOOL, OP_TO_CHW, OP_LINEAR, OP_OUTPUT = range(9)
FIELDS = 20


class Unsupported(ValueError):
    """A layer this engine does not run (the caller falls back to the torch modules)."""


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class EventPlan:
    """A network compiled for :func:`_step_rows`: integer op table, float parameters, packed weights,
    the scratch size and the layout of the membrane state (one flat float32 row per slot)."""

    def __init__(self, model: SpikingNet):
        self.input_size = tuple(int(v) for v in model.input_size)
        self.num_classes = int(model.num_classes)
        ops: list[list[int]] = []
        fparams: list[tuple[float, float]] = []
        weights: list[np.ndarray] = []
        self._weight_len = 0
        self._scratch = 0
        self.state_size = 0

        def put(array) -> int:
            flat = np.ascontiguousarray(np.asarray(array, dtype=np.float32).ravel())
            offset = self._weight_len
            weights.append(flat)
            self._weight_len += flat.size
            return offset

        def region(size: int) -> int:
            offset = self._scratch
            self._scratch += int(size)
            return offset

        def op(code, *fields, f=(0.0, 0.0)):
            row = [code, *(int(v) for v in fields)]
            ops.append(row + [0] * (FIELDS - len(row)))
            fparams.append((float(f[0]), float(f[1])))

        c, h, w = self.input_size
        shape: tuple = (c, h, w)           # (C, H, W) kept channel-last in the scratch, or (F,)
        at = region(c * h * w)
        op(OP_INPUT, c, h, w, at)
        for name, layer in model.body.named_children():
            size = int(np.prod(shape))
            if isinstance(layer, (nn.Dropout, nn.Identity)):
                continue
            if isinstance(layer, LIF):
                op(OP_LIF, at, size, self.state_size, f=(layer.decay, layer.threshold))
                self.state_size += size
            elif isinstance(layer, nn.Conv2d):
                if len(shape) != 3:
                    raise Unsupported(f"{name}: convolution of a flat input")
                if (layer.groups != 1 or _pair(layer.dilation) != (1, 1) or isinstance(layer.padding, str)
                        or layer.padding_mode != "zeros"):
                    raise Unsupported(f"{name}: groups, dilation, string padding or padding mode")
                kh, kw = _pair(layer.kernel_size)
                sh, sw = _pair(layer.stride)
                ph, pw = _pair(layer.padding)
                ci, hi, wi = shape
                co = int(layer.out_channels)
                ho, wo = (hi + 2 * ph - kh) // sh + 1, (wi + 2 * pw - kw) // sw + 1
                # (C, KH, KW, CO) with kx reversed: an input pixel's taps kx = KW-1..0 reach outputs
                # tx ascending, so at stride 1 one row of taps is one contiguous run of KW*CO outputs
                w_off = put(layer.weight.detach().cpu().numpy().transpose(1, 2, 3, 0)[:, :, ::-1, :])
                b_off = put(layer.bias.detach().cpu().numpy()) if layer.bias is not None else -1
                out = region(ho * wo * co)
                op(OP_CONV, at, ci, hi, wi, out, co, ho, wo, kh, kw, sh, sw, ph, pw, w_off, b_off)
                at, shape = out, (co, ho, wo)
            elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
                if layer.running_mean is None or layer.running_var is None:
                    raise Unsupported(f"{name}: batch norm without running statistics")
                channels = shape[0]
                if channels != layer.num_features:
                    raise Unsupported(f"{name}: {layer.num_features} features, input has {channels}")
                var = layer.running_var.detach().cpu().double().numpy()
                mean = layer.running_mean.detach().cpu().double().numpy()
                gamma = layer.weight.detach().cpu().double().numpy() if layer.weight is not None else 1.0
                beta = layer.bias.detach().cpu().double().numpy() if layer.bias is not None else 0.0
                scale = gamma / np.sqrt(var + layer.eps)
                shift = beta - mean * scale
                p_off = put(np.concatenate([np.broadcast_to(scale, (channels,)), np.broadcast_to(shift, (channels,))]))
                op(OP_AFFINE, at, size, channels, p_off)
            elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
                if len(shape) != 3 or _pair(layer.padding) != (0, 0) or layer.ceil_mode:
                    raise Unsupported(f"{name}: pooling with padding or ceil mode")
                if isinstance(layer, nn.MaxPool2d) and (_pair(layer.dilation) != (1, 1) or layer.return_indices):
                    raise Unsupported(f"{name}: dilated max pooling")
                kh, kw = _pair(layer.kernel_size)
                sh, sw = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
                ci, hi, wi = shape
                ho, wo = (hi - kh) // sh + 1, (wi - kw) // sw + 1
                out = region(ci * ho * wo)
                if isinstance(layer, nn.MaxPool2d):
                    op(OP_MAXPOOL, at, ci, hi, wi, out, ho, wo, kh, kw, sh, sw)
                else:
                    divisor = layer.divisor_override or kh * kw
                    op(OP_AVGPOOL, at, ci, hi, wi, out, ho, wo, kh, kw, sh, sw, f=(divisor, 0.0))
                at, shape = out, (ci, ho, wo)
            elif isinstance(layer, nn.Flatten):
                if len(shape) == 3:
                    out = region(size)
                    op(OP_TO_CHW, at, *shape, out)       # torch's flatten order, which the next weights expect
                    at = out
                shape = (size,)
            elif isinstance(layer, nn.Linear):
                if len(shape) != 1 or shape[0] != layer.in_features:
                    raise Unsupported(f"{name}: linear layer on input of shape {shape}")
                fo = int(layer.out_features)
                w_off = put(layer.weight.detach().cpu().numpy().T)             # (F_in, F_out)
                b_off = put(layer.bias.detach().cpu().numpy()) if layer.bias is not None else -1
                out = region(fo)
                op(OP_LINEAR, at, shape[0], out, fo, w_off, b_off)
                at, shape = out, (fo,)
            else:
                raise Unsupported(f"{name}: {type(layer).__name__} layers")
        if shape != (self.num_classes,):
            raise Unsupported(f"the network ends with shape {shape}, expected ({self.num_classes},)")
        op(OP_OUTPUT, at, self.num_classes)
        ops, fparams = _fuse_affine_into_lif(ops, fparams)
        self.ops = np.asarray(ops, dtype=np.int64)
        self.fparams = np.asarray(fparams, dtype=np.float32)
        self.weights = np.concatenate(weights) if weights else np.zeros(1, np.float32)
        self.scratch_size = self._scratch


def _fuse_affine_into_lif(ops: list, fparams: list) -> tuple[list, list]:
    """A batch norm (OP_AFFINE) whose output only the next op, a LIF on the same values, reads
    becomes part of that LIF (fields 4, 5: its channels and parameters; channels 0: none). The LIF
    then computes the same float32 operations in the same order, in one pass instead of two."""
    fused_ops, fused_params = [], []
    k = 0
    while k < len(ops):
        o = ops[k]
        if (o[0] == OP_AFFINE and k + 1 < len(ops) and ops[k + 1][0] == OP_LIF and ops[k + 1][1] == o[1]
                and ops[k + 1][2] == o[2]):
            lif = list(ops[k + 1])
            lif[4], lif[5] = o[3], o[4]
            fused_ops.append(lif)
            fused_params.append(fparams[k + 1])
            k += 2
            continue
        fused_ops.append(o)
        fused_params.append(fparams[k])
        k += 1
    return fused_ops, fused_params


@nb.njit(cache=True, nogil=True, inline="always")
def _add_scaled(acc, w, v):
    """acc += v * w, element by element."""
    for j in range(acc.shape[0]):
        acc[j] += v * w[j]


@nb.njit(cache=True, nogil=True, inline="always")
def _add_scaled4(acc, w0, w1, w2, w3, v0, v1, v2, v3):
    """_add_scaled of four rows in one pass over acc (read and written once, not four times), each
    element still taking its four terms one at a time in this order: the same sums, bit for bit."""
    for j in range(acc.shape[0]):
        acc[j] = (((acc[j] + v0 * w0[j]) + v1 * w1[j]) + v2 * w2[j]) + v3 * w3[j]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _step_rows(ops, fparams, weights, x, slots, membranes, stale, buf, logits):
    """Every row r: one step of the network on x[r] (C*H*W float32, torch's order) with the membranes of
    slot slots[r] (updated in place; zeroed first, and unmarked, where ``stale[slot]``); logits[r] written.

    Inner loops index views (``buf[a:b]``) with range counters, which Numba knows are not negative:
    indexing with a computed offset instead costs a wraparound test per access and keeps LLVM from
    vectorising the loop (measured: 10x slower)."""
    for r in range(x.shape[0]):
        mem = membranes[slots[r]]
        if stale[slots[r]]:
            mem[:] = 0.0
            stale[slots[r]] = 0
        xr = x[r]
        for k in range(ops.shape[0]):
            o = ops[k]
            code = o[0]
            if code == OP_INPUT:            # (C, H, W) -> channel-last
                C, H, W, out = o[1], o[2], o[3], o[4]
                dst = buf[out:out + C * H * W]
                for c in range(C):
                    for p in range(H * W):
                        dst[p * C + c] = xr[c * H * W + p]
            elif code == OP_CONV:           # scatter every nonzero input into the outputs it touches
                src, C, H, W, out, CO, HO, WO = o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8]
                KH, KW, SH, SW, PH, PW, w_off, b_off = o[9], o[10], o[11], o[12], o[13], o[14], o[15], o[16]
                dst = buf[out:out + HO * WO * CO]
                if b_off >= 0:
                    bias = weights[b_off:b_off + CO]
                    for p in range(HO * WO):
                        row = dst[p * CO:(p + 1) * CO]
                        for co in range(CO):
                            row[co] = bias[co]
                else:
                    dst[:] = 0.0
                nz_c = np.empty(C, np.int64)
                nz_v = np.empty(C, np.float32)
                for y in range(H):
                    for xx in range(W):
                        pixel = buf[src + (y * W + xx) * C:src + (y * W + xx + 1) * C]
                        nnz = 0
                        for c in range(C):      # without a branch: spikes are too random to predict
                            nz_c[nnz] = c
                            nz_v[nnz] = pixel[c]
                            nnz += pixel[c] != 0.0
                        if nnz == 0:
                            continue
                        # the outputs this input touches, found once per pixel, not per channel.
                        # Every output gets its terms in the same order either way (input pixels in
                        # raster order, then channels): each input pixel reaches it through one tap.
                        for ky in range(KH):
                            ty = y + PH - ky
                            if ty < 0:
                                break
                            if SH != 1:
                                if ty % SH != 0:
                                    continue
                                ty //= SH
                            if ty >= HO:
                                continue
                            if SW == 1:
                                # taps kx = KW-1..0 (stored reversed) reach tx = xx+PW-KW+1 .. xx+PW: one run
                                tx_lo = max(0, xx + PW - KW + 1)
                                tx_hi = min(WO - 1, xx + PW)
                                if tx_hi < tx_lo:
                                    continue
                                run = (tx_hi - tx_lo + 1) * CO
                                acc = dst[(ty * WO + tx_lo) * CO:(ty * WO + tx_lo) * CO + run]
                                r0 = tx_lo - (xx + PW - KW + 1)  # first reversed tap in the run
                                tap = w_off + (ky * KW + r0) * CO
                                per_channel = KH * KW * CO  # from one input channel's weights to the next
                                m = 0
                                while m + 4 <= nnz:
                                    b0 = tap + nz_c[m] * per_channel
                                    b1 = tap + nz_c[m + 1] * per_channel
                                    b2 = tap + nz_c[m + 2] * per_channel
                                    b3 = tap + nz_c[m + 3] * per_channel
                                    _add_scaled4(acc, weights[b0:b0 + run], weights[b1:b1 + run], weights[b2:b2 + run],
                                                 weights[b3:b3 + run], nz_v[m], nz_v[m + 1], nz_v[m + 2], nz_v[m + 3])
                                    m += 4
                                for m in range(m, nnz):
                                    b0 = tap + nz_c[m] * per_channel
                                    _add_scaled(acc, weights[b0:b0 + run], nz_v[m])
                                continue
                            for kx in range(KW):
                                tx = xx + PW - kx
                                if tx < 0:
                                    break
                                if tx % SW != 0:
                                    continue
                                tx //= SW
                                if tx >= WO:
                                    continue
                                ob = (ty * WO + tx) * CO
                                acc = dst[ob:ob + CO]
                                for m in range(nnz):
                                    wb = w_off + ((nz_c[m] * KH + ky) * KW + (KW - 1 - kx)) * CO
                                    _add_scaled(acc, weights[wb:wb + CO], nz_v[m])
            elif code == OP_AFFINE:         # per channel (batch norm), channel-last
                at, n, C, p_off = o[1], o[2], o[3], o[4]
                scale = weights[p_off:p_off + C]
                shift = weights[p_off + C:p_off + 2 * C]
                for p in range(n // C):
                    row = buf[at + p * C:at + (p + 1) * C]
                    for c in range(C):
                        row[c] = row[c] * scale[c] + shift[c]
            elif code == OP_LIF:            # u = decay * u + I; spike and reset to 0 where u >= threshold
                at, n, s_off, C, p_off = o[1], o[2], o[3], o[4], o[5]
                decay, threshold = fparams[k, 0], fparams[k, 1]
                if C > 0:                   # I = h * scale + shift per channel (a fused batch norm)
                    scale = weights[p_off:p_off + C]
                    shift = weights[p_off + C:p_off + 2 * C]
                    for p in range(n // C):
                        u = mem[s_off + p * C:s_off + (p + 1) * C]
                        h = buf[at + p * C:at + (p + 1) * C]
                        for c in range(C):
                            current = h[c] * scale[c]
                            current = current + shift[c]
                            v = u[c] * decay
                            v = v + current
                            fire = v >= threshold
                            u[c] = np.float32(0.0) if fire else v
                            h[c] = np.float32(1.0) if fire else np.float32(0.0)
                    continue
                u = mem[s_off:s_off + n]
                h = buf[at:at + n]
                for i in range(n):
                    v = u[i] * decay
                    v = v + h[i]
                    fire = v >= threshold
                    u[i] = np.float32(0.0) if fire else v
                    h[i] = np.float32(1.0) if fire else np.float32(0.0)
            elif code == OP_MAXPOOL or code == OP_AVGPOOL:   # no padding
                src, C, H, W, out, HO, WO, KH, KW, SH, SW = o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11]
                divisor = fparams[k, 0]
                if code == OP_MAXPOOL and KH == 2 and KW == 2 and SH == 2 and SW == 2:
                    # the common 2x2 pooling: its four inputs in one pass per output pixel, taken in the order
                    # of the general loop below (the same maxima, NaN and signed zeros included)
                    for oy in range(HO):
                        for ox in range(WO):
                            dst = buf[out + (oy * WO + ox) * C:out + (oy * WO + ox + 1) * C]
                            a = src + ((2 * oy) * W + 2 * ox) * C
                            b = a + W * C
                            top_left = buf[a:a + C]
                            top_right = buf[a + C:a + 2 * C]
                            bottom_left = buf[b:b + C]
                            bottom_right = buf[b + C:b + 2 * C]
                            for c in range(C):
                                dst[c] = max(max(max(top_left[c], top_right[c]), bottom_left[c]), bottom_right[c])
                    continue
                for oy in range(HO):
                    for ox in range(WO):
                        dst = buf[out + (oy * WO + ox) * C:out + (oy * WO + ox + 1) * C]
                        first = src + ((oy * SH) * W + ox * SW) * C
                        if code == OP_MAXPOOL:
                            dst[:] = buf[first:first + C]
                        else:
                            dst[:] = 0.0
                        for ky in range(KH):
                            for kx in range(KW):
                                a = src + ((oy * SH + ky) * W + ox * SW + kx) * C
                                window = buf[a:a + C]
                                if code == OP_MAXPOOL:
                                    for c in range(C):
                                        dst[c] = max(dst[c], window[c])
                                else:
                                    for c in range(C):
                                        dst[c] += window[c]
                        if code == OP_AVGPOOL:
                            for c in range(C):
                                dst[c] = dst[c] / divisor
            elif code == OP_TO_CHW:         # channel-last -> torch's flatten order
                src, C, H, W, out = o[1], o[2], o[3], o[4], o[5]
                dst = buf[out:out + C * H * W]
                for p in range(H * W):
                    pixel = buf[src + p * C:src + (p + 1) * C]
                    for c in range(C):
                        dst[c * H * W + p] = pixel[c]
            elif code == OP_LINEAR:         # scatter every nonzero input
                src, FI, out, FO, w_off, b_off = o[1], o[2], o[3], o[4], o[5], o[6]
                dst = buf[out:out + FO]
                if b_off >= 0:
                    dst[:] = weights[b_off:b_off + FO]
                else:
                    dst[:] = 0.0
                inp = buf[src:src + FI]
                pending = 0                  # nonzero inputs held back, added four at a time
                i0 = i1 = i2 = 0
                for i in range(FI):
                    if inp[i] == 0.0:
                        continue
                    if pending == 0:
                        i0 = i
                    elif pending == 1:
                        i1 = i
                    elif pending == 2:
                        i2 = i
                    else:
                        _add_scaled4(dst, weights[w_off + i0 * FO:w_off + (i0 + 1) * FO],
                                     weights[w_off + i1 * FO:w_off + (i1 + 1) * FO],
                                     weights[w_off + i2 * FO:w_off + (i2 + 1) * FO],
                                     weights[w_off + i * FO:w_off + (i + 1) * FO], inp[i0], inp[i1], inp[i2], inp[i])
                        pending = 0
                        continue
                    pending += 1
                for m in range(pending):
                    i = i0 if m == 0 else (i1 if m == 1 else i2)
                    _add_scaled(dst, weights[w_off + i * FO:w_off + (i + 1) * FO], inp[i])
            else:                           # OP_OUTPUT
                at, K = o[1], o[2]
                for j in range(K):
                    logits[r, j] = buf[at + j]


# Rows per call above which a step is split over two threads: the hand-over to a pool thread costs
# ~50 us, a row ~100 us (N-MNIST network).
SPLIT_MIN_ROWS = 4


class EventEngine:
    """Steps rows of a flat membrane state (``membranes[slot]`` = every LIF neuron of one stream).

    ``threads``: how many threads share the rows of one call (default: 2 where the process may use
    two cores or more). Each row is computed whole by one thread, with the same operations whichever
    thread it is, so splitting changes no value. Offline evaluation splits every call; the streaming
    job only its long batches (``step(..., split=False)`` otherwise: see the scheduler)."""

    def __init__(self, model: SpikingNet, threads: int | None = None):
        from ..threads import available_threads

        self.plan = EventPlan(model)
        self.threads = max(1, int(threads if threads is not None else min(2, available_threads())))
        self._bufs = [np.zeros(max(1, self.plan.scratch_size), np.float32) for _ in range(self.threads)]
        self.state_shapes = {"neurons": (max(1, self.plan.state_size),)}

    def step(self, membranes: torch.Tensor, slots, frames: np.ndarray, stale: np.ndarray | None = None,
             split: bool = True) -> np.ndarray:
        """frames (n, C, H, W) float32 or int counts; membranes (capacity + 1, S) float32, a CPU tensor or
        its numpy view; ``stale`` (capacity + 1,) uint8: slots to zero before their step (then unmarked);
        ``split=False``: on the calling thread only."""
        plan = self.plan
        if stale is None:
            stale = np.zeros(membranes.shape[0], np.uint8)
        n = frames.shape[0]
        x = np.ascontiguousarray(frames, dtype=np.float32).reshape(n, -1)
        slots = np.asarray(slots, np.int64)
        mem = membranes if isinstance(membranes, np.ndarray) else membranes.numpy()
        out = np.empty((n, plan.num_classes), np.float32)
        if self.threads < 2 or n < SPLIT_MIN_ROWS or not split:
            _step_rows(plan.ops, plan.fparams, plan.weights, x, slots, mem, stale, self._bufs[0], out)
            return out
        from ..threads import run_parts

        run_parts(_step_rows, [(plan.ops, plan.fparams, plan.weights, x[rows], slots[rows], mem, stale, self._bufs[k],
                                out[rows[0]:rows[-1] + 1])
                               for k, rows in enumerate(np.array_split(np.arange(n), self.threads))])
        return out
