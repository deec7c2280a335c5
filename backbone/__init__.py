"""The MobileNet v1 backbone, with nothing task-specific in it."""

from __future__ import annotations

from backbone.mobilenet import MobileNetV1, scaled_channels
from backbone.weights import load_weights


def mobilenet_v1(*, width_mult: float = 1.0, num_classes: int = 1000, weights: str | None = None, **options):
    """Build a MobileNetV1; `weights` is a file in any format `load_weights` recognises."""
    model = MobileNetV1(width_mult=width_mult, num_classes=num_classes, **options)
    if weights:
        load_weights(model, weights)
    return model


__all__ = ["MobileNetV1", "load_weights", "mobilenet_v1", "scaled_channels"]
