"""Spiking networks that run multi-step (a whole sequence) and single-step (one frame, state carried).

A model is a stack of named layers. Stateless layers (convolution, batch
norm, pooling, flatten, linear) act on each timestep independently; in
multi-step mode they run once over the T*N frames folded into the batch. The
spiking layers (:class:`LIF`) carry a membrane from one timestep to the next:
in multi-step mode the layer loops over T itself; in single-step mode the
membrane lives in a :class:`~streamsnn.snn.state.NetworkState` the caller
holds. The last layer is a non-spiking linear readout, so the network emits
logits at every timestep: ``forward`` gives (T, N, K), ``step`` gives (N, K).
Both modes use the same :func:`~streamsnn.snn.neuron.lif_step` and give the
same logits (tested).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ConfigError
from .neuron import DECAY, THRESHOLD, lif_step
from .state import LIFTrace, NetworkState, StateShapeError


class LIF(nn.Module):
    """A layer of LIF neurons (decay 0.5, threshold 1, hard reset, triangle surrogate)."""

    def __init__(self, decay: float = DECAY, threshold: float = THRESHOLD):
        super().__init__()
        self.decay = float(decay)
        self.threshold = float(threshold)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, threshold={self.threshold}"

    def forward_seq(self, current: torch.Tensor, name: str = "", record: bool = False):
        """current (T, N, ...) -> spikes (T, N, ...), membrane starting at 0; optionally a LIFTrace."""
        u_post = None
        spikes, us, posts = [], [], []
        # unbind, not current[t]: the backward of T selects would fill T full-size zero tensors
        for current_t in current.unbind(0):
            s, u, u_post = lif_step(current_t, u_post, self.decay, self.threshold)
            spikes.append(s)
            if record:
                us.append(u)
                posts.append(u_post)
        s_seq = torch.stack(spikes)
        trace = None
        if record:
            trace = LIFTrace(name, current, torch.stack(us), s_seq, torch.stack(posts), self.decay,
                             self.threshold)
        return s_seq, trace

    def forward_step(self, current: torch.Tensor, u_post_prev: torch.Tensor):
        """current (N, ...) and the previous u_post -> (spikes, new u_post)."""
        s, _, u_post = lif_step(current, u_post_prev, self.decay, self.threshold)
        return s, u_post


class SpikingNet(nn.Module):
    """A named stack of layers with a non-spiking linear readout at every timestep.

    ``forward(x)``: x (T, N, C, H, W) float -> logits (T, N, K); with
    ``return_traces=True`` also the list of :class:`LIFTrace` (one per spiking
    layer), which the regularisers read.
    ``init_state(batch_size)`` / ``step(frame, state)``: single-step inference;
    ``step`` updates ``state`` in place and returns logits (N, K).
    """

    def __init__(self, name: str, input_size, num_classes: int, layers: "OrderedDict[str, nn.Module]",
                 layer_spec: list | None = None):
        super().__init__()
        self.model_name = name
        # Set for networks built from a layer list (an imported NIR graph): the checkpoint stores it,
        # because no model-zoo name rebuilds them.
        self.layer_spec = layer_spec
        self.input_size = tuple(int(v) for v in input_size)
        self.num_classes = int(num_classes)
        self.body = nn.Sequential(layers)
        self.lif_names = [n for n, m in self.body.named_children() if isinstance(m, LIF)]
        self.state_shapes = self._infer_state_shapes()

    def _infer_state_shapes(self) -> dict[str, tuple]:
        shapes = {}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                h = torch.zeros((1, *self.input_size))
                for name, layer in self.body.named_children():
                    if isinstance(layer, LIF):
                        shapes[name] = tuple(h.shape[1:])
                    else:
                        h = layer(h)
        except RuntimeError as exc:
            raise ConfigError(f"model {self.model_name!r} does not accept input size {self.input_size}: {exc}") from exc
        finally:
            self.train(was_training)
        if tuple(h.shape[1:]) != (self.num_classes,):
            raise ConfigError(f"model {self.model_name!r} ends with shape {tuple(h.shape[1:])}, "
                              f"expected ({self.num_classes},)")
        return shapes

    def _check_input(self, x: torch.Tensor, lead: int, what: str) -> None:
        if x.dim() != lead + len(self.input_size) or tuple(x.shape[lead:]) != self.input_size:
            raise StateShapeError(f"{what} has shape {tuple(x.shape)}; model {self.model_name!r} expects "
                                  f"{'(T, N, ' if lead == 2 else '(N, '}"
                                  f"{', '.join(map(str, self.input_size))})")

    def forward(self, x: torch.Tensor, return_traces: bool = False):
        self._check_input(x, 2, "input sequence")
        T, N = x.shape[:2]
        h = x
        traces = []
        for name, layer in self.body.named_children():
            if isinstance(layer, LIF):
                h, trace = layer.forward_seq(h, name, record=return_traces)
                if trace is not None:
                    traces.append(trace)
            else:
                y = layer(h.reshape(T * N, *h.shape[2:]))
                h = y.reshape(T, N, *y.shape[1:])
        return (h, traces) if return_traces else h

    def init_state(self, batch_size: int, device=None) -> NetworkState:
        if device is None:
            device = next(self.parameters()).device
        return NetworkState.zeros(self.state_shapes, batch_size, device=device)

    def step(self, frame: torch.Tensor, state: NetworkState) -> torch.Tensor:
        """One frame (N, C, H, W) -> logits (N, K); the membranes in ``state`` are updated in place."""
        self._check_input(frame, 1, "frame")
        state.check_batch(frame.shape[0])
        h = frame
        for name, layer in self.body.named_children():
            if isinstance(layer, LIF):
                h, state.membranes[name] = layer.forward_step(h, state.membranes[name])
            else:
                h = layer(h)
        state.timestep += 1
        return h

    def describe(self) -> dict:
        return {"name": self.model_name, "input_size": list(self.input_size), "num_classes": self.num_classes}


# --------------------------------------------------------------------------- model zoo

def _conv_block(layers, i, cin, cout, k=3, stride=1, padding=1, pool=True):
    layers[f"conv{i}"] = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
    layers[f"bn{i}"] = nn.BatchNorm2d(cout)
    layers[f"lif{i}"] = LIF()
    if pool:
        layers[f"pool{i}"] = nn.MaxPool2d(2)


def _flat_features(layers, input_size) -> int:
    with torch.no_grad():
        seq = nn.Sequential(OrderedDict((k, v) for k, v in layers.items() if not isinstance(v, LIF))).eval()
        return int(seq(torch.zeros((1, *input_size))).flatten(1).shape[1])


def nmnist_net(input_size=(2, 34, 34), num_classes=10, channels=(16, 32), hidden=128,
               dropout: float = 0.3) -> SpikingNet:
    """Compact conv SNN for N-MNIST: 16c3-BN-LIF-MP2, 32c3-BN-LIF-MP2, dropout 0.3 (training only),
    FC 128 (spiking), FC readout. 269k parameters (a 1.1 MB checkpoint)."""
    layers = OrderedDict()
    cin = input_size[0]
    for i, c in enumerate(channels, start=1):
        _conv_block(layers, i, cin, c)
        cin = c
    layers["flatten"] = nn.Flatten()
    features = _flat_features(layers, input_size)
    if dropout:
        layers["dropout"] = nn.Dropout(dropout)
    if hidden:
        layers["fc1"] = nn.Linear(features, hidden)
        layers["lif_fc1"] = LIF()
        features = hidden
    layers["fc"] = nn.Linear(features, num_classes)
    return SpikingNet("nmnist", input_size, num_classes, layers)


def dvsgesture_net(input_size=(2, 128, 128), num_classes=11) -> SpikingNet:
    """The paper's DVS128 Gesture network: 64c4s4, then 128-channel conv blocks each followed by
    max-pool (down to 4x4 or less), FC 512 (spiking), FC readout."""
    layers = OrderedDict()
    _conv_block(layers, 1, input_size[0], 64, k=4, stride=4, padding=0, pool=False)
    size = min(input_size[1:]) // 4
    cin, i = 64, 2
    while size >= 8:
        _conv_block(layers, i, cin, 128)
        cin, size, i = 128, size // 2, i + 1
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(_flat_features(layers, input_size), 512)
    layers["lif_fc1"] = LIF()
    layers["fc"] = nn.Linear(512, num_classes)
    return SpikingNet("dvsgesture", input_size, num_classes, layers)


def cifar10dvs_net(input_size=(2, 48, 48), num_classes=10) -> SpikingNet:
    """VGGSNN used for CIFAR10-DVS in TET and the STR paper:
    64c3-128c3-AP2-256c3-256c3-AP2-512c3-512c3-AP2-512c3-512c3-AP2-FC."""
    layers = OrderedDict()
    plan = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"]
    cin, i, j = input_size[0], 1, 1
    for item in plan:
        if item == "A":
            layers[f"pool{j}"] = nn.AvgPool2d(2)
            j += 1
        else:
            _conv_block(layers, i, cin, item, pool=False)
            cin, i = item, i + 1
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(_flat_features(layers, input_size), num_classes)
    return SpikingNet("cifar10dvs", input_size, num_classes, layers)


MODELS = {"nmnist": nmnist_net, "dvsgesture": dvsgesture_net, "cifar10dvs": cifar10dvs_net}


# --------------------------------------------------------------------------- networks from a layer list

def _pair(value, what: str) -> tuple[int, int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value, value])]
    if len(values) != 2:
        raise ConfigError(f"{what} must be one or two integers, got {value!r}")
    return values[0], values[1]


def layer_from_spec(entry: dict) -> nn.Module:
    """One layer from its description (see :func:`build_from_layers`), freshly initialised."""
    kind = entry.get("kind")
    if kind == "conv2d":
        padding = entry["padding"]
        return nn.Conv2d(int(entry["in_channels"]), int(entry["out_channels"]), _pair(entry["kernel_size"], "kernel_size"),
                         stride=_pair(entry["stride"], "stride"),
                         padding=padding if isinstance(padding, str) else _pair(padding, "padding"),
                         dilation=_pair(entry["dilation"], "dilation"), groups=int(entry["groups"]),
                         bias=bool(entry["bias"]))
    if kind == "linear":
        return nn.Linear(int(entry["in_features"]), int(entry["out_features"]), bias=bool(entry["bias"]))
    if kind == "lif":
        return LIF(decay=float(entry["decay"]), threshold=float(entry["threshold"]))
    if kind == "maxpool2d":
        return nn.MaxPool2d(_pair(entry["kernel_size"], "kernel_size"), stride=_pair(entry["stride"], "stride"))
    if kind == "avgpool2d":
        return nn.AvgPool2d(_pair(entry["kernel_size"], "kernel_size"), stride=_pair(entry["stride"], "stride"),
                            padding=_pair(entry["padding"], "padding"))
    if kind == "sumpool2d":
        # divisor 1 makes the average pool an exact sum (no division, no rounding)
        return nn.AvgPool2d(_pair(entry["kernel_size"], "kernel_size"), stride=_pair(entry["stride"], "stride"),
                            padding=_pair(entry["padding"], "padding"), divisor_override=1)
    if kind == "flatten":
        return nn.Flatten()
    raise ConfigError(f"unknown layer kind {kind!r}; known: {', '.join(LAYER_KINDS)}")


LAYER_KINDS = ("conv2d", "linear", "lif", "maxpool2d", "avgpool2d", "sumpool2d", "flatten")


def build_from_layers(layer_spec: list, input_size, num_classes: int, name: str = "nir") -> SpikingNet:
    """A network from a plain list of layers, each ``{"name": ..., "kind": one of LAYER_KINDS, ...}``
    with the constructor arguments of that kind (what :mod:`~streamsnn.snn.nir_io` makes from a NIR graph)."""
    if not isinstance(layer_spec, list) or not layer_spec:
        raise ConfigError("a layer list must be a non-empty list of layer descriptions")
    layers = OrderedDict()
    for i, entry in enumerate(layer_spec):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"layer {i} must be a dict with a 'name'")
        if entry["name"] in layers:
            raise ConfigError(f"layer name {entry['name']!r} appears twice")
        try:
            layers[entry["name"]] = layer_from_spec(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"layer {entry['name']!r} ({entry.get('kind')}): {exc!r}") from exc
    return SpikingNet(name, input_size, num_classes, layers, layer_spec=layer_spec)


def build_model(name: str, input_size=None, num_classes: int | None = None) -> SpikingNet:
    """A model from its name plus its input size (C, H, W) and number of classes (defaults per model)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    kwargs = {}
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
        if len(input_size) != 3 or min(input_size) < 1:
            raise ConfigError(f"input size must be (C, H, W), got {input_size}")
        kwargs["input_size"] = input_size
    if num_classes is not None:
        if int(num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        kwargs["num_classes"] = int(num_classes)
    return factory(**kwargs)
