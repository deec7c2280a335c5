"""Inference speed of our MobileNet v1 against timm's `mobilenetv1_100` and torchvision's `mobilenet_v2`.

All paths are timed in the same run, fp32 at 224 px, batch 1 and 32, under `torch.inference_mode`:
PyTorch eager in NCHW and in channels-last memory format, ours also with BatchNorm folded into the
convs, and ONNX Runtime (ours and timm's, exported the same way). Rounds are interleaved across the
candidates so a change in machine load hits all of them alike; the figure is the median call time.

BatchNorm statistics are calibrated on random images first (see `timing.py`).

    python benchmarks/backbone_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
import torchvision
from timing import Runner, calibrate_batchnorm, eager, time_interleaved  # benchmarks/ is on the path
from torch import nn

from backbone import mobilenet_v1
from backbone.complexity import format_table
from backbone.export import export_onnx, fuse_for_inference, onnx_session, run_onnx

EAGER = ("eager NCHW", "channels-last")
TIMM = "timm mobilenetv1_100"


def onnxruntime(model: nn.Module, resolution: int, folder: Path, name: str, threads: int) -> Runner:
    path = export_onnx(model, folder / f"{name}.onnx", resolution=resolution)
    session = onnx_session(path, threads=threads)
    return lambda x: run_onnx(session, x.numpy())


def candidates(resolution: int, threads: int, folder: Path) -> dict[tuple[str, str], Runner]:
    ours = calibrate_batchnorm(mobilenet_v1(), resolution)
    timm_v1 = calibrate_batchnorm(timm.create_model("mobilenetv1_100", pretrained=False), resolution)
    tv_v2 = calibrate_batchnorm(torchvision.models.mobilenet_v2(), resolution)
    return {
        ("ours", "eager NCHW"): eager(ours, channels_last=False),
        ("ours", "channels-last"): eager(ours, channels_last=True),
        ("ours", "channels-last, BN folded"): eager(fuse_for_inference(ours), channels_last=True),
        ("ours", "onnxruntime"): onnxruntime(ours, resolution, folder, "ours", threads),
        (TIMM, "eager NCHW"): eager(timm_v1, channels_last=False),
        (TIMM, "channels-last"): eager(timm_v1, channels_last=True),
        (TIMM, "onnxruntime"): onnxruntime(timm_v1, resolution, folder, "timm", threads),
        ("torchvision mobilenet_v2", "eager NCHW"): eager(tv_v2, channels_last=False),
        ("torchvision mobilenet_v2", "channels-last"): eager(tv_v2, channels_last=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        runners = candidates(args.resolution, args.threads, Path(folder))
        rows = []
        for batch in args.batches:
            x = torch.randn(batch, 3, args.resolution, args.resolution)
            seconds = time_interleaved(runners, x, rounds=args.rounds, calls=max(1, 32 // batch))
            timm_best = min(t for (model, path), t in seconds.items() if model == TIMM and path in EAGER)
            for (model, path), t in seconds.items():
                rows.append((model, path, batch, f"{1000 * t / batch:.2f}", f"{t / timm_best:.2f}"))
    print(f"fp32, {args.resolution} px, {args.threads} threads; ratio = time / timm's best PyTorch path "
          "(< 1 is faster)")
    print(format_table(("model", "path", "batch", "ms/image", "ratio"), rows, left=2))


if __name__ == "__main__":
    main()
