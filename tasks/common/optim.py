"""Optimiser groups and learning-rate schedules, built once for every task from `OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from tasks.common.config import OptimConfig


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Depthwise filters, BatchNorm parameters and biases: the paper puts little or no decay on them."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
        is_depthwise = (
            isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        )
        for param_name, _ in module.named_parameters(recurse=False):
            if is_norm or is_depthwise or param_name == "bias":
                names.add(prefix + param_name)
    return names


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.decay_all or cfg.weight_decay == 0:
        return [{"params": [p for _, p in trainable], "weight_decay": cfg.weight_decay}]
    exempt = no_decay_parameter_names(model)
    decay = [p for n, p in trainable if n not in exempt]
    no_decay = [p for n, p in trainable if n in exempt]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.name == "rmsprop":
        # PyTorch adds eps outside the square root, TF inside; with TF's eps=1.0 both are ~1 for
        # small gradients, so the OD API recipes carry over.
        return torch.optim.RMSprop(
            groups, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.eps, momentum=cfg.momentum
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimiser {cfg.name!r}: use rmsprop, sgd or adamw")


def lr_factor(
    step: int,
    *,
    cfg: OptimConfig,
    total_steps: int,
    steps_per_epoch: float,
    time_progress: Callable[[], float] | None = None,
) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (linear warm-up, then the schedule).

    With `time_progress` (the share of the time budget used, 0..1) the cosine, and a `warmup_share`
    warm-up, follow the clock instead of the step count.
    """
    progress, share = None, cfg.warmup_share
    warmup = 0 if share else int(cfg.warmup_epochs * steps_per_epoch)
    if time_progress is not None:
        progress = min(max(time_progress(), 0.0), 1.0)
        if progress < share:
            return max(progress / share, 1e-3)
        progress = (progress - share) / (1 - share)
    elif share:
        warmup = int(share * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** math.floor((step - warmup) / max(cfg.step_epochs * steps_per_epoch, 1))
    if progress is None:
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    *,
    total_steps: int,
    steps_per_epoch: float,
    time_progress: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    options = dict(
        cfg=cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch, time_progress=time_progress
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **options))
