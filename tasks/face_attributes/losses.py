"""Face-attribute losses: per-attribute BCE on labels (how a teacher is trained), and the distillation loss
of the paper's §4.5 (how a student emulates it).

Both average over attributes and images. Distillation, per attribute, is the binary cross-entropy of the
student's logit against the teacher's sigmoid output: its gradient is the binary KL divergence's, so the
student's minimum is the teacher's probability itself. With a temperature T both logits are divided by T
before the sigmoid and the loss is multiplied by T² (so its gradient keeps its scale); T = 1 is the paper.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def attribute_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE-with-logits over images and attributes; `pos_weight` (one per attribute) scales positives."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pos_weight)


def pos_weight_from_rates(rates: np.ndarray | torch.Tensor, *, max_weight: float = 20.0) -> torch.Tensor:
    """negatives / positives per attribute, capped at `max_weight` (an attribute with no positives gets
    the cap: it cannot be learnt from labels, and an infinite weight would be NaN)."""
    rates = torch.as_tensor(np.asarray(rates, dtype=np.float64))
    weight = (1 - rates) / rates.clamp(min=1e-12)
    return weight.clamp(min=1.0 / max_weight, max=max_weight).float()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """T² · mean over images and attributes of BCE(sigmoid(student / T), sigmoid(teacher / T))."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student outputs {tuple(student_logits.shape)} but the teacher {tuple(teacher_logits.shape)}: "
            "the two must predict the same attributes"
        )
    soft = torch.sigmoid(teacher_logits.to(student_logits.dtype) / temperature)
    loss = F.binary_cross_entropy_with_logits(student_logits / temperature, soft)
    return loss * temperature**2
