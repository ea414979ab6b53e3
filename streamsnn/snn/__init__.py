"""Stateful spiking networks: LIF neurons, multi-step/single-step models, explicit state.

Public API::

    build_model(name, input_size, num_classes) -> SpikingNet
    model(x)                      x (T, N, C, H, W) float -> logits (T, N, K)
    model.init_state(batch_size)  -> NetworkState (membranes at 0)
    model.step(frame, state)      frame (N, C, H, W) -> logits (N, K); state updated in place
    state.reset(), state.detach()
    frames_to_input(frames)       binner output (int16 counts) -> the float tensor the model takes
    to_nir(model, meta, dt)       -> nir.NIRGraph; from_nir(graph, dt) -> (model, meta); write_nir / read_nir
    resize_input(x, (H, W))       that tensor resized to a model input smaller than the sensor
"""
from __future__ import annotations

from .models import LIF, MODELS, SpikingNet, build_from_layers, build_model
from .neuron import DECAY, THRESHOLD, TriangleSpike, lif_step, spike
from .nir_io import from_nir, read_nir, to_nir, write_nir
from .preprocess import frames_to_input, resize_input
from .state import LIFTrace, NetworkState, StateShapeError

__all__ = ["LIF", "MODELS", "SpikingNet", "build_model", "build_from_layers", "to_nir", "from_nir", "write_nir",
           "read_nir", "DECAY", "THRESHOLD", "TriangleSpike", "lif_step",
           "spike", "frames_to_input", "resize_input", "LIFTrace", "NetworkState", "StateShapeError"]
