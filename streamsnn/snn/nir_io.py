"""NIR in and out: a streamsnn network as a NIR graph (Neuromorphic Intermediate Representation), and back.

NIR describes neurons in continuous time; streamsnn's LIF is a discrete-time
update, one step per frame (see :mod:`~streamsnn.snn.neuron`)::

    u[t] = decay * u_post[t-1] + I[t];   s[t] = (u[t] >= threshold);   u_post[t] = u[t] * (1 - s[t])

NIR's LIF is ``tau * dv/dt = (v_leak - v) + r * I`` with a spike when
``v > v_threshold`` and then ``v = v_reset``. One forward-Euler step of length
``dt`` (the time step every NIR simulator discretises with) gives::

    v[t] = v[t-1] + dt/tau * (v_leak - v[t-1] + r * I[t]) = (1 - dt/tau) * v[t-1] + (dt/tau) * r * I[t]   (v_leak = 0)

so the two agree exactly when ``1 - dt/tau = decay`` and ``(dt/tau) * r = 1``:

    tau = dt / (1 - decay)     (decay 0.5: tau = 2 dt)
    r   = tau / dt = 1 / (1 - decay)     (decay 0.5: r = 2)
    v_leak = 0,  v_reset = 0 (hard reset to zero)
    v_threshold = the largest float32 below ``threshold``

The last line turns streamsnn's ``u >= 1`` into NIR's strict ``v > v_threshold``:
for float32 membranes ``u >= 1`` holds exactly when ``u > 0.99999994``. ``dt``
is stated in the graph's metadata (``dt``, seconds); by default it is the frame
length, so ``tau`` is physical time (30 ms frames: tau = 60 ms). A decay of 1 (no
leak) is written as NIR's IF node with ``r = 1 / dt``.

Other layers: a convolution followed by batch norm is written as one Conv2d
with the (eval-mode) batch norm folded into its weights and bias (computed in
float64, stored float32); Linear with a bias is NIR Affine, without one NIR
Linear; Flatten keeps NIR's convention of no batch axis (start_dim 0); average
pooling is AvgPool2d, an average pool with divisor 1 is SumPool2d; dropout is
left out (it is the identity at inference). NIR has no max pool: a max pool
over *spikes* (values 0 or 1) is written as AvgPool2d followed by a LIF node
with ``tau = dt``, ``r = 1``, ``v_threshold = 0`` (no memory, fires when any
input of the window spiked), which is the same function; a max pool over
anything else is refused.

Graph metadata: ``dt``, ``frame_length_us``, ``sensor_size`` (width, height,
polarities), ``timesteps``, ``cutoff`` (JSON), ``class_names`` (JSON), and
``streamsnn`` (the checkpoint's whole metadata as JSON), so the file alone says
how to feed the network (frames of ``frame_length_us`` of event counts per
polarity, float) and how to read it (running sum of the outputs, the cutoff).

Import (:func:`from_nir`) accepts a chain Input -> ... -> Output of those nodes
and maps them back; the AvgPool2d + memoryless-LIF pair after a spiking layer
becomes a max pool again, so an exported network comes back layer for layer.
Anything that streamsnn cannot run exactly (another node type, branches,
per-neuron parameters that differ, v_leak or v_reset other than 0, an input
scaling ``r * dt / tau`` other than 1, a threshold of 0 or less, a missing time
step) raises CheckpointError naming the node and the parameter.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..io.detect import HDF5_MAGIC
from .checkpoint import write_atomically
from .models import LIF, SpikingNet, build_from_layers, layer_from_spec

SUPPORTED_NODES = ("Input", "Output", "Conv2d", "Affine", "Linear", "Flatten", "AvgPool2d", "SumPool2d",
                   "LIF", "IF")
# A relative tolerance of a few float32 ulps: parameters written in float32 by any tool still match.
_RTOL = 1e-6


def is_nir_file(path) -> bool:
    """True for a ``.nir`` file or any HDF5 file (a streamsnn checkpoint is a zip, never HDF5)."""
    path = Path(path)
    if path.suffix.lower() == ".nir":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False


# --------------------------------------------------------------------------- export

def _below(threshold: float) -> np.float32:
    """The largest float32 below ``threshold``: ``u >= threshold`` == ``u > _below(threshold)`` in float32."""
    return np.nextafter(np.float32(threshold), np.float32(-np.inf))


def _lif_node(shape, decay: float, threshold: float, dt: float, name: str):
    import nir

    def full(value):
        return np.full(shape, value, dtype=np.float32)

    if not 0.0 <= decay <= 1.0:
        raise CheckpointError(f"layer {name!r}: decay {decay} is outside [0, 1]; NIR's LIF cannot express it")
    if decay == 1.0:
        return nir.IF(r=full(1.0 / dt), v_threshold=full(_below(threshold)), v_reset=full(0.0))
    tau = dt / (1.0 - decay)
    return nir.LIF(tau=full(tau), r=full(tau / dt), v_leak=full(0.0), v_threshold=full(_below(threshold)),
                   v_reset=full(0.0))


def _pool_args(layer, name):
    def pair(v):
        return np.array(v if isinstance(v, (tuple, list)) else (v, v), dtype=np.int64)

    if getattr(layer, "ceil_mode", False):
        raise CheckpointError(f"layer {name!r}: pooling with ceil_mode has no NIR equivalent")
    return dict(kernel_size=pair(layer.kernel_size), stride=pair(layer.stride or layer.kernel_size),
                padding=pair(layer.padding))


def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None):
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if bn is not None:
        # eval-mode batch norm: y = (x - mean) * gamma / sqrt(var + eps) + beta, per output channel
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return weight.float().numpy(), bias.float().numpy()


def _graph_metadata(meta: dict, dt: float) -> dict:
    binning = meta.get("binning") or {}
    out = {"dt": float(dt), "neuron_mapping": "streamsnn LIF u[t] = decay*u[t-1] + I[t], spike u >= threshold, "
           "reset to 0; NIR LIF by forward Euler with step dt: tau = dt/(1-decay), r = tau/dt, v_leak = 0, "
           "v_reset = 0, v_threshold = largest float32 below threshold",
           "input": "frames of event counts per (polarity, y, x), float32, one frame per dt; "
                    "read the running sum of the outputs"}
    if binning.get("time_window"):
        out["frame_length_us"] = float(binning["time_window"])
    if meta.get("sensor_size"):
        out["sensor_size"] = np.asarray(meta["sensor_size"], dtype=np.int64)
    if meta.get("timesteps"):
        out["timesteps"] = int(meta["timesteps"])
    if meta.get("cutoff"):
        out["cutoff"] = json.dumps(meta["cutoff"])
    if meta.get("class_names"):
        out["class_names"] = json.dumps(list(meta["class_names"]))
    out["streamsnn"] = json.dumps(meta)
    return out


def to_nir(model: SpikingNet, meta: dict | None = None, dt: float | None = None):
    """A :class:`nir.NIRGraph` of ``model`` (eval-mode weights) with ``meta`` as graph metadata.

    ``dt`` (seconds) is the time step the LIF time constants are stated for; by default the frame
    length in ``meta["binning"]["time_window"]`` (µs). Raises CheckpointError for a layer NIR
    cannot express exactly."""
    import nir

    meta = dict(meta or {})
    meta.update(model=model.model_name, input_size=list(model.input_size), num_classes=model.num_classes)
    if dt is None:
        window = (meta.get("binning") or {}).get("time_window")
        if not window:
            raise CheckpointError("the checkpoint names no frame length (binning.time_window); give the time step dt")
        dt = float(window) * 1e-6
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise CheckpointError(f"time step dt must be a positive number of seconds, got {dt}")

    model = model.eval()
    children = list(model.body.named_children())
    nodes = OrderedDict(input=nir.Input(input_type={"input": np.array(model.input_size)}))
    shape = tuple(model.input_size)
    binary = False  # whether the current activations are spikes (0 or 1)
    i = 0
    with torch.no_grad():
        h = torch.zeros((1, *model.input_size))
        while i < len(children):
            name, layer = children[i]
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            consumed = 1
            if isinstance(layer, nn.Conv2d):
                if layer.padding_mode != "zeros":
                    raise CheckpointError(f"layer {name!r}: padding mode {layer.padding_mode!r} has no NIR equivalent")
                bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
                weight, bias = _fold_batch_norm(layer, bn)
                padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
                nodes[name] = nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight, stride=tuple(layer.stride),
                                         padding=padding, dilation=tuple(layer.dilation), groups=layer.groups,
                                         bias=bias)
                consumed = 2 if bn is not None else 1
                binary = False
            elif isinstance(layer, nn.BatchNorm2d):
                raise CheckpointError(f"layer {name!r}: batch norm that does not follow a convolution cannot be "
                                      "folded, and NIR has no batch-norm node")
            elif isinstance(layer, LIF):
                nodes[name] = _lif_node(shape, layer.decay, layer.threshold, dt, name)
                binary = True
            elif isinstance(layer, nn.MaxPool2d):
                if not binary:
                    raise CheckpointError(f"layer {name!r}: NIR has no max pool; streamsnn writes one only over "
                                          "spikes (as AvgPool2d plus a threshold-0 LIF), and this one's input is not "
                                          "a spiking layer")
                if _pair_of(layer.dilation) != (1, 1) or _pair_of(layer.padding) != (0, 0):
                    raise CheckpointError(f"layer {name!r}: max pool with padding or dilation has no NIR equivalent")
                nodes[name] = nir.AvgPool2d(**_pool_args(layer, name))
                out_shape = tuple(layer(h).shape[1:])
                # tau = dt, r = 1: no memory, v = the window's average; > 0 exactly when one input spiked
                nodes[f"{name}_any"] = nir.LIF(tau=np.full(out_shape, dt, np.float32),
                                               r=np.ones(out_shape, np.float32),
                                               v_leak=np.zeros(out_shape, np.float32),
                                               v_threshold=np.zeros(out_shape, np.float32),
                                               v_reset=np.zeros(out_shape, np.float32))
            elif isinstance(layer, nn.AvgPool2d):
                if not layer.count_include_pad and _pair_of(layer.padding) != (0, 0):
                    raise CheckpointError(f"layer {name!r}: average pool that excludes padding has no NIR equivalent")
                if layer.divisor_override == 1:
                    nodes[name] = nir.SumPool2d(**_pool_args(layer, name))
                elif layer.divisor_override is None:
                    nodes[name] = nir.AvgPool2d(**_pool_args(layer, name))
                else:
                    raise CheckpointError(f"layer {name!r}: pool divisor {layer.divisor_override} has no NIR equivalent")
                binary = False
            elif isinstance(layer, nn.Flatten):
                if layer.start_dim != 1 or layer.end_dim != -1:
                    raise CheckpointError(f"layer {name!r}: only a flatten of all but the batch axis maps to NIR")
                nodes[name] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            elif isinstance(layer, nn.Linear):
                weight = layer.weight.detach().float().numpy().copy()
                if layer.bias is not None:
                    nodes[name] = nir.Affine(weight=weight, bias=layer.bias.detach().float().numpy().copy())
                else:
                    nodes[name] = nir.Linear(weight=weight)
                binary = False
            elif isinstance(layer, (nn.Dropout, nn.Identity)):
                pass  # the identity at inference
            else:
                raise CheckpointError(f"layer {name!r}: {type(layer).__name__} has no NIR equivalent")
            for _, done in children[i:i + consumed]:
                if not isinstance(done, LIF):
                    h = done(h)
            shape = tuple(h.shape[1:])
            i += consumed
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    names = list(nodes)
    edges = list(zip(names[:-1], names[1:]))
    return nir.NIRGraph(nodes=dict(nodes), edges=edges, metadata=_graph_metadata(meta, dt))


def _pair_of(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def write_nir(path, model: SpikingNet, meta: dict | None = None, dt: float | None = None) -> Path:
    """Write ``to_nir(model, meta, dt)`` to ``path`` (HDF5, NIR's file format); temporary file, then rename."""
    return _write_graph(path, to_nir(model, meta, dt))


def _write_graph(path, graph) -> Path:
    import nir

    return write_atomically(path, lambda tmp: nir.write(tmp, graph))


# --------------------------------------------------------------------------- import

def _uniform(node_name: str, node, param: str) -> float:
    values = np.asarray(getattr(node, param), dtype=np.float64)
    if values.size == 0:
        raise CheckpointError(f"node {node_name!r} ({type(node).__name__}): parameter {param} is empty")
    first = values.flat[0]
    if not np.all(values == first):
        raise CheckpointError(f"node {node_name!r} ({type(node).__name__}): parameter {param} differs between "
                              f"neurons ({values.min()} .. {values.max()}); streamsnn's LIF has one value per layer")
    if not math.isfinite(first):
        raise CheckpointError(f"node {node_name!r} ({type(node).__name__}): parameter {param} is {first}")
    return float(first)


def _neuron_layer(name: str, node, dt: float) -> dict:
    """A NIR LIF / IF node -> the streamsnn LIF it equals exactly, as a layer description."""
    import nir

    kind = type(node).__name__
    v_reset = _uniform(name, node, "v_reset")
    if v_reset != 0.0:
        raise CheckpointError(f"node {name!r} ({kind}): reset rule v_reset = {v_reset}; streamsnn's LIF resets to 0")
    r = np.float32(_uniform(name, node, "r"))
    if isinstance(node, nir.IF):
        decay = np.float32(1.0)
        scaling = r * np.float32(dt)
        what = "r * dt"
    else:
        v_leak = _uniform(name, node, "v_leak")
        if v_leak != 0.0:
            raise CheckpointError(f"node {name!r} ({kind}): v_leak = {v_leak}; streamsnn's LIF leaks towards 0")
        tau = np.float32(_uniform(name, node, "tau"))
        if not tau > 0:
            raise CheckpointError(f"node {name!r} ({kind}): tau = {tau} must be positive")
        # float32 arithmetic, as the membrane runs in float32: dt = 30 ms and tau = 60 ms give exactly 0.5
        step = np.float32(dt) / tau
        decay = np.float32(1.0) - step
        if not 0.0 <= step <= 1.0:
            raise CheckpointError(f"node {name!r} ({kind}): dt / tau = {step} (dt {dt} s, tau {tau} s) gives a decay "
                                  "outside [0, 1]; check the time step")
        scaling = step * r
        what = "r * dt / tau"
    if not math.isclose(float(scaling), 1.0, rel_tol=_RTOL):
        raise CheckpointError(f"node {name!r} ({kind}): input scaling {what} = {float(scaling):.9g}; streamsnn's LIF "
                              "adds its input unscaled (needs 1; scale the weights before it instead)")
    v_threshold = np.float32(_uniform(name, node, "v_threshold"))
    if not v_threshold > 0:
        raise CheckpointError(f"node {name!r} ({kind}): v_threshold = {v_threshold}; streamsnn's LIF needs a positive "
                              "threshold")
    # NIR fires when v > v_threshold; streamsnn when u >= threshold: the next float32 up is the same test.
    threshold = np.nextafter(v_threshold, np.float32(np.inf))
    return {"kind": "lif", "decay": float(decay), "threshold": float(threshold)}


def _is_memoryless_any(name: str, node, dt: float) -> bool:
    """A LIF with tau = dt, r = 1, v_leak = v_reset = v_threshold = 0: fires when its input is > 0."""
    import nir

    if not isinstance(node, nir.LIF):
        return False
    try:
        values = {p: _uniform(name, node, p) for p in ("tau", "r", "v_leak", "v_reset", "v_threshold")}
    except CheckpointError:
        return False
    return (math.isclose(values["tau"], dt, rel_tol=_RTOL) and values["r"] == 1.0 and values["v_leak"] == 0.0
            and values["v_reset"] == 0.0 and values["v_threshold"] == 0.0)


def _ints(value, name, node, param, n=2) -> list:
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    arr = np.atleast_1d(np.asarray(value)).astype(np.int64).tolist()
    if len(arr) == 1:
        arr = arr * n
    if len(arr) != n:
        raise CheckpointError(f"node {name!r} ({type(node).__name__}): {param} {value!r} is not {n} integers")
    return arr


def _chain(graph) -> list[str]:
    """The node names from Input to Output; CheckpointError for anything but a single chain."""
    import nir

    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    outputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise CheckpointError(f"graph has {len(inputs)} Input and {len(outputs)} Output nodes; streamsnn runs "
                              "graphs with one of each")
    successors: dict[str, list] = {k: [] for k in graph.nodes}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise CheckpointError(f"edge ({src!r}, {dst!r}) names node {end!r}, which the graph does not have")
        successors[src].append(dst)
    order, node = [], inputs[0]
    while True:
        order.append(node)
        if node == outputs[0]:
            break
        nxt = successors[node]
        if len(nxt) != 1:
            raise CheckpointError(f"node {node!r} has {len(nxt)} outgoing edges; streamsnn runs a single chain "
                                  "Input -> ... -> Output (no branches, no recurrence)")
        node = nxt[0]
        if node in order:
            raise CheckpointError(f"node {node!r} is reached twice: a recurrent graph; streamsnn runs feed-forward "
                                  "chains")
    left = set(graph.nodes) - set(order)
    if left:
        raise CheckpointError(f"nodes {sorted(left)} are not on the path from Input to Output")
    return order


def _probe(entry: dict, h: torch.Tensor, name: str, kind: str) -> torch.Tensor:
    """Run a sample through the new layer on the meta device (shapes only, no memory, no weight
    initialisation): its output, or CheckpointError when the shapes do not fit."""
    try:
        with torch.device("meta"), torch.no_grad():
            layer = layer_from_spec(entry)
            return h if isinstance(layer, LIF) else layer(h)
    except Exception as exc:
        raise CheckpointError(f"node {name!r} ({kind}) does not fit its input of shape {list(h.shape[1:])}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _torch_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "layer"


def _plain_metadata(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain_metadata(v) for k, v in value.items()}
    return value


def _meta_from_graph(metadata: dict) -> dict:
    metadata = _plain_metadata(dict(metadata or {}))
    meta = {}
    if isinstance(metadata.get("streamsnn"), str):
        try:
            meta = json.loads(metadata["streamsnn"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"graph metadata 'streamsnn' is not JSON ({exc})") from exc
    else:
        # a graph from another tool: keep what it says in the keys streamsnn writes too
        if metadata.get("frame_length_us"):
            meta["binning"] = {"time_window": float(metadata["frame_length_us"])}
        if metadata.get("sensor_size") is not None:
            meta["sensor_size"] = [int(v) for v in metadata["sensor_size"]]
        if metadata.get("timesteps"):
            meta["timesteps"] = int(metadata["timesteps"])
        for key in ("cutoff", "class_names"):
            if isinstance(metadata.get(key), str):
                try:
                    meta[key] = json.loads(metadata[key])
                except json.JSONDecodeError:
                    pass
    return meta


def from_nir(graph, dt: float | None = None) -> tuple[SpikingNet, dict]:
    """A streamsnn network equal to ``graph`` (a :class:`nir.NIRGraph`) -> (model in eval mode, meta).

    ``dt`` (seconds) is the time step the graph's time constants are meant for; by default the
    graph's metadata ``dt``. Raises CheckpointError naming the node and parameter that streamsnn
    cannot represent exactly."""
    import nir

    metadata = dict(getattr(graph, "metadata", None) or {})
    if dt is None:
        dt = metadata.get("dt")
    if dt is None:
        raise CheckpointError("the graph does not state its time step (metadata 'dt'); give the time step "
                              "(seconds per frame) its LIF time constants were meant for: "
                              "streamsnn import-nir IN.nir OUT.pt --dt SECONDS, then use OUT.pt")
    dt = float(np.asarray(dt))
    if not (math.isfinite(dt) and dt > 0):
        raise CheckpointError(f"time step dt must be a positive number of seconds, got {dt}")
    order = _chain(graph)
    input_node = graph.nodes[order[0]]
    input_size = [int(v) for v in np.asarray(input_node.input_type["input"]).ravel()]
    if len(input_size) != 3:
        raise CheckpointError(f"node {order[0]!r} (Input): shape {input_size}; streamsnn feeds frames shaped "
                              "(polarities, height, width)")
    h = torch.zeros((1, *input_size), device="meta")
    layers: list[tuple[dict, dict]] = []
    names: set[str] = set()
    spiking = False
    body = order[1:-1]
    i = 0
    while i < len(body):
        name = body[i]
        node = graph.nodes[name]
        kind = type(node).__name__
        entry: dict
        consumed = 1
        if isinstance(node, nir.Conv2d):
            weight = np.asarray(node.weight, dtype=np.float32)
            if weight.ndim != 4:
                raise CheckpointError(f"node {name!r} (Conv2d): weight has shape {weight.shape}, expected 4 axes")
            groups = int(np.asarray(node.groups))
            padding = _ints(node.padding, name, node, "padding")
            entry = {"kind": "conv2d", "in_channels": int(weight.shape[1]) * groups, "out_channels": int(weight.shape[0]),
                     "kernel_size": list(weight.shape[2:]), "stride": _ints(node.stride, name, node, "stride"),
                     "padding": padding, "dilation": _ints(node.dilation, name, node, "dilation"), "groups": groups,
                     "bias": True}
            bias = np.zeros(weight.shape[0], np.float32) if node.bias is None else np.asarray(node.bias, np.float32)
            params = {"weight": weight, "bias": np.broadcast_to(bias, (weight.shape[0],)).copy()}
            spiking = False
        elif isinstance(node, (nir.Affine, nir.Linear)):
            weight = np.asarray(node.weight, dtype=np.float32)
            if weight.ndim != 2:
                raise CheckpointError(f"node {name!r} ({kind}): weight has shape {weight.shape}, expected 2 axes")
            has_bias = isinstance(node, nir.Affine)
            entry = {"kind": "linear", "in_features": int(weight.shape[1]), "out_features": int(weight.shape[0]),
                     "bias": has_bias}
            params = {"weight": weight}
            if has_bias:
                params["bias"] = np.broadcast_to(np.asarray(node.bias, np.float32), (weight.shape[0],)).copy()
            spiking = False
        elif isinstance(node, nir.Flatten):
            start, end = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
            if start != 0 or end not in (-1, h.dim() - 2):
                raise CheckpointError(f"node {name!r} (Flatten): start_dim {start}, end_dim {end}; streamsnn flattens "
                                      "all axes of a sample (NIR shapes have no batch axis: start_dim 0, end_dim -1)")
            entry, params = {"kind": "flatten"}, {}
        elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            args = {p: _ints(getattr(node, p), name, node, p) for p in ("kernel_size", "stride", "padding")}
            nxt_name = body[i + 1] if i + 1 < len(body) else None
            if (isinstance(node, nir.AvgPool2d) and spiking and args["padding"] == [0, 0] and nxt_name is not None
                    and _is_memoryless_any(nxt_name, graph.nodes[nxt_name], dt)):
                # the max pool over spikes that to_nir writes: any spike in the window
                entry = {"kind": "maxpool2d", "kernel_size": args["kernel_size"], "stride": args["stride"]}
                consumed = 2
            else:
                entry = {"kind": "avgpool2d" if isinstance(node, nir.AvgPool2d) else "sumpool2d", **args}
                spiking = False
            params = {}
        elif isinstance(node, (nir.LIF, nir.IF)):
            entry, params = _neuron_layer(name, node, dt), {}
            spiking = True
        else:
            raise CheckpointError(f"node {name!r} ({kind}) has no exact streamsnn equivalent; supported nodes: "
                                  f"{', '.join(SUPPORTED_NODES)}")
        torch_name = _torch_name(name)
        while torch_name in names:
            torch_name += "_"
        names.add(torch_name)
        entry = {"name": torch_name, **entry}
        layers.append((entry, params))
        h = _probe(entry, h, name, kind)
        i += consumed
    shape = tuple(h.shape[1:])
    declared = (graph.nodes[order[-1]].output_type or {}).get("output")
    output_shape = [] if declared is None else [int(v) for v in np.asarray(declared).ravel()]
    if len(shape) != 1:
        raise CheckpointError(f"the graph's last layer gives shape {list(shape)}; streamsnn needs one value per class")
    if output_shape and output_shape != list(shape):
        raise CheckpointError(f"node {order[-1]!r} (Output): shape {output_shape}, but the layers give {list(shape)}")
    spec = [e for e, _ in layers]
    try:
        model = build_from_layers(spec, input_size, shape[0], name="nir")
    except Exception as exc:
        raise CheckpointError(f"cannot build a network from the graph: {exc}") from exc
    state = model.state_dict()
    for entry, params in layers:
        for key, value in params.items():
            full = f"body.{entry['name']}.{key}"
            if tuple(state[full].shape) != value.shape:
                raise CheckpointError(f"node {entry['name']!r}: {key} has shape {value.shape}, the layer expects "
                                      f"{tuple(state[full].shape)}")
            state[full] = torch.from_numpy(np.ascontiguousarray(value))
    model.load_state_dict(state, strict=True)
    meta = _meta_from_graph(metadata)
    meta.update(model=model.model_name, input_size=input_size, num_classes=int(shape[0]), layers=spec,
                nir={"dt": dt, "exported_model": meta.get("model")})
    return model.eval(), meta


def read_nir(path, dt: float | None = None) -> tuple[SpikingNet, dict]:
    """Read a NIR file -> (model in eval mode, meta); CheckpointError naming the file for any problem."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: NIR file does not exist")
    try:
        graph = nir.read(path)
    except Exception as exc:  # not HDF5, a node type this nir version does not know, missing fields ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable NIR graph ({first[:300]})") from exc
    if not isinstance(graph, nir.NIRGraph):
        raise CheckpointError(f"{path}: holds a single {type(graph).__name__} node, not a NIR graph")
    try:
        model, meta = from_nir(graph, dt)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    meta["nir"]["file"] = str(path)
    return model, meta


def _summary(model: SpikingNet, meta: dict, dt: float) -> dict:
    lifs = [m for m in model.body.children() if isinstance(m, LIF)]
    return {"model": meta.get("model"), "layers": [f"{n}:{type(m).__name__}" for n, m in model.body.named_children()],
            "dt_s": dt, "lif": sorted({(m.decay, m.threshold) for m in lifs}),
            "frame_length_us": (meta.get("binning") or {}).get("time_window"), "timesteps": meta.get("timesteps"),
            "cutoff": meta.get("cutoff", {}).get("policy") if isinstance(meta.get("cutoff"), dict) else None}


def export_checkpoint(checkpoint, out, dt: float | None = None) -> dict:
    """``streamsnn export``: a checkpoint (or NIR file) -> a NIR file; returns what was written."""
    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    try:
        graph = to_nir(model, meta, dt)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from exc
    path = _write_graph(out, graph)
    summary = _summary(model, meta, graph.metadata["dt"])
    summary.update(written=str(path), nodes=[f"{n}:{type(v).__name__}" for n, v in graph.nodes.items()])
    del summary["layers"]
    return summary


def import_nir(nir_path, out, dt: float | None = None) -> dict:
    """``streamsnn import-nir``: a NIR file -> a streamsnn checkpoint; returns what was written."""
    from .checkpoint import save_checkpoint

    model, meta = read_nir(nir_path, dt)
    path = save_checkpoint(out, model, meta)
    summary = _summary(model, meta, meta["nir"]["dt"])
    summary["written"] = str(path)
    return summary
