"""Config dataclasses that every task's YAML shares: which backbone, and how to optimise it.

They are dataclasses so that LightningCLI (jsonargparse) shows them as nested, typed options
(`--model.backbone.width_mult 0.5`), and the saved config reproduces the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from backbone import MobileNetV1, mobilenet_v1

T = TypeVar("T")


@dataclass
class BackboneConfig:
    """The MobileNet to build; `weights` is any file `backbone.load_weights` recognises."""

    width_mult: float = 1.0
    weights: str | None = None
    conv: Literal["separable", "full"] = "separable"
    shallow: bool = False
    activation: Literal["relu6", "relu"] = "relu6"
    output_stride: int = 32
    tf_padding: bool = False
    dropout: float = 0.001
    # PyTorch's 0.1, not TF-slim's 0.0003: short runs need running statistics that keep up.
    bn_momentum: float = 0.1

    def build(self, *, num_classes: int = 0) -> MobileNetV1:
        options = dataclasses.asdict(self)
        weights = options.pop("weights")
        return mobilenet_v1(num_classes=num_classes, weights=weights, **options)


@dataclass
class OptimConfig:
    """Optimiser and schedule. Defaults follow the paper (§3.2): RMSprop, no decay on depthwise/BN/bias."""

    name: Literal["rmsprop", "sgd", "adamw"] = "rmsprop"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    decay_all: bool = False  # also decay depthwise filters, BN parameters and biases
    rmsprop_alpha: float = 0.9
    eps: float = 1.0  # TF's RMSProp epsilon (applied outside the square root in TF, see optim.py)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    # What the cosine schedule spans: the run's optimiser steps (from max_epochs / max_steps), or its
    # `trainer.max_time`, so a recipe pointed at a data set of any size anneals just as time runs out.
    schedule_by: Literal["steps", "time"] = "steps"
    warmup_epochs: float = 0.0
    # Warm-up as a share of the run instead (its steps, or its max_time with schedule_by: time): a
    # budget-bound recipe then warms up for the same share of its time whatever the data size.
    # When > 0 it replaces warmup_epochs.
    warmup_share: float = 0.0
    step_epochs: float = 2.5  # TF-slim: x0.94 every 2.5 epochs
    step_gamma: float = 0.94
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_share < 1.0:
            raise ValueError(f"optim.warmup_share must be in [0, 1), got {self.warmup_share}")


def as_dataclass(cls: type[T], value: Any) -> T:
    """Accept a dataclass or the plain dict it was saved as (checkpoints hold only plain types)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


def plain(value: Any) -> Any:
    """Dataclasses -> dicts, recursively, so hyper-parameters load with `weights_only=True`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value
