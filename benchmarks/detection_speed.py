"""SSD300-MobileNet inference speed against torchvision's ssdlite320_mobilenet_v3_large, in the same run.

    python benchmarks/detection_speed.py [--width-mult 1.0] [--threads 2] [--iters 30] [--no-onnx]

Both detectors run with random weights and 91 class outputs (what COCO models have), batch 1,
channels-last. Two timings each: the whole eager pipeline (`model([image])`: resize, network, box
decoding, NMS) and the network alone (backbone + heads), which is also exported to ONNX and timed
in ONNX Runtime (torchvision's per-class NMS loop stays in PyTorch: it does not export cleanly).
Numbers are medians in ms/image; the ratio column puts ours over theirs (below 1: ours is faster).
COCO-eval timing is `benchmarks/coco_eval_speed.py`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbone import mobilenet_v1
from backbone.complexity import format_table
from tasks.detection.ssd import ssd_mobilenet


class Network(nn.Module):
    """Backbone + heads of a torchvision SSD: the part that exports to ONNX."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.detector.head(list(self.detector.backbone(x).values()))
        return outputs["bbox_regression"], outputs["cls_logits"]


def median_ms(fn: Callable[[], object], *, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def onnx_ms(network: nn.Module, x: torch.Tensor, *, iters: int, threads: int, workdir: Path) -> float | str:
    try:
        import onnxruntime as ort

        path = workdir / "network.onnx"
        torch.onnx.export(network, (x,), str(path), input_names=["image"], opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"image": x.contiguous().numpy()}
        return median_ms(lambda: session.run(None, feed), iters=iters)
    except Exception as err:  # report why instead of dropping the row
        return f"n/a ({type(err).__name__})"


def time_detector(name: str, detector: nn.Module, size: int, args, workdir: Path) -> dict[str, float | str]:
    detector = detector.eval().to(memory_format=torch.channels_last)
    image = torch.rand(3, size, size) * 2 - 1
    batch = image[None].contiguous(memory_format=torch.channels_last)
    network = Network(detector).eval()
    with torch.inference_mode():
        row = {
            "eager pipeline": median_ms(lambda: detector([image]), iters=args.iters),
            "eager network": median_ms(lambda: network(batch), iters=args.iters),
        }
    if args.onnx:
        row["onnxruntime network"] = onnx_ms(
            network, image[None], iters=args.iters, threads=args.threads, workdir=workdir
        )
    print(f"{name}: done", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = ssd_mobilenet(
        body=mobilenet_v1(width_mult=args.width_mult, num_classes=0), num_classes=90, image_size=300
    )
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            f"SSD300-MobileNet α={args.width_mult} (ours)": time_detector("ours", ours, 300, args, Path(tmp)),
            "ssdlite320_mobilenet_v3_large": time_detector("torchvision", theirs, 320, args, Path(tmp)),
        }
    (our_row, their_row) = rows.values()
    table = []
    for key in our_row:
        a, b = our_row[key], their_row[key]
        ratio = f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else "-"
        fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else v  # noqa: E731
        table.append((key, fmt(a), fmt(b), ratio))
    print(f"\nms/image, batch 1, {args.threads} threads, median of {args.iters}")
    print(format_table(("timing", *rows.keys(), "ours/theirs"), table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
