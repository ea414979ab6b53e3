"""Named training recipes: one per dataset (the authors' settings for the paper's datasets) plus the
N-MNIST ones measured here. ``train_config(name, **overrides)`` turns one into a TrainConfig.

The paper's datasets follow the authors' recipe (Wu et al. 2024, after TET): SGD, lr 0.1, momentum
0.9, weight decay 5e-4, cosine to 0 over 100 epochs; batch 32 for DVS128 Gesture, 128 otherwise;
T = 16 for Gesture, 10 otherwise; TET lambda 1e-3 and STR 0.5 (the loss defaults); random translation
up to +-25 px at the sensor's resolution; the VGG input resized to 48x48. Frames are windows of fixed
length from each sample's first event (what the streaming job can do online), not the authors'
split of the whole recording into T equal parts; the lengths below make T windows cover a typical
sample (Gesture ~6 s, CIFAR10-DVS ~1.3 s, N-Caltech101 three 100 ms saccades).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError
from .loop import TrainConfig


@dataclass(frozen=True)
class Recipe:
    dataset: str
    model: str
    timesteps: int
    time_window: float       # µs per frame
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    shift: int = 1           # random translation, pixels at the sensor's resolution
    input_hw: tuple | None = None  # model input (H, W) when smaller than the sensor
    about: str = ""


_PAPER = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 100, "shift": 25}

RECIPES = {
    # The README recipe. 25 epochs: at 15 the compact network still underfits (94 % Test for seed 0).
    "nmnist": Recipe("nmnist", "nmnist", 10, 30_000.0, 25, 32, "adam", 5e-3,
                     about="N-MNIST, 30 ms x 10 frames (the whole ~300 ms sample): one frame shows most digits"),
    # The harder regime: the first saccade (100 ms) in 5 ms frames, where one frame is not enough.
    # 15 epochs: what fitted the 2-core development machine (see docs/anytime.md for what it gave).
    "nmnist-short": Recipe("nmnist", "nmnist", 20, 5_000.0, 15, 32, "adam", 5e-3,
                           about="N-MNIST, 5 ms x 20 frames (the first saccade): one frame is not enough"),
    "dvsgesture": Recipe("dvsgesture", "dvsgesture", 16, 375_000.0, batch_size=32, **_PAPER,
                         about="DVS128 Gesture, the authors' recipe, 375 ms x 16 frames"),
    "cifar10dvs": Recipe("cifar10dvs", "cifar10dvs", 10, 130_000.0, batch_size=128, input_hw=(48, 48), **_PAPER,
                         about="CIFAR10-DVS, the authors' recipe (VGG at 48x48), 130 ms x 10 frames"),
    "ncaltech101": Recipe("ncaltech101", "cifar10dvs", 10, 30_000.0, batch_size=128, input_hw=(48, 48), **_PAPER,
                          about="N-Caltech101, the authors' recipe (VGG at 48x48), 30 ms x 10 frames"),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}") from None


def train_config(name: str, **overrides) -> TrainConfig:
    """The TrainConfig of recipe ``name``; keyword arguments (TrainConfig fields) override it,
    None meaning "the recipe's value"."""
    base = asdict(recipe(name))
    base.pop("about")
    base["recipe"] = name
    for key, value in overrides.items():
        if value is not None:
            base[key] = value
    try:
        cfg = TrainConfig(**base)
    except TypeError as exc:
        raise ConfigError(f"recipe override: {exc}") from None
    cfg.validate()
    return cfg
