"""What every speed benchmark here times the same way: BN calibration, eager runners, interleaved medians.

BatchNorm statistics are calibrated on random images first: a freshly initialised BN is the identity,
activations then shrink to denormal floats, and the CPU slows down by 10-50x on them, which would
time the arithmetic of denormals, not the networks. Rounds are interleaved across the candidates so a
change in machine load hits all of them alike; the figure is the median call time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

Runner = Callable[[torch.Tensor], object]


def calibrate_batchnorm(model: nn.Module, size: int, forward: Callable | None = None) -> nn.Module:
    """Cumulative BN statistics of two random batches, run through `forward` (default: the model)."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(2):
            x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed))
            (forward or model)(x)
    return model.eval()


def eager(model: nn.Module, channels_last: bool) -> Runner:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=memory_format))

    return run


def time_interleaved(runners: dict, x: torch.Tensor, *, rounds: int, calls: int) -> dict:
    """Median seconds per call for each runner, measured in interleaved rounds after a warm-up."""
    for run in runners.values():
        run(x)
        run(x)
    times: dict = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            for _ in range(calls):
                start = time.perf_counter()
                run(x)
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}
