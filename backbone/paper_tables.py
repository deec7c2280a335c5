"""The paper's complexity figures (Tables 2-7 and 9) beside the counts measured on our modules.

The paper's numbers are copied here as published; ours are measured, never derived from them.
Parameters are ours in full (conv and FC weights, FC bias, BatchNorm γ/β); Table 2's parameter
shares use weights only, which is the basis that reproduces the paper's percentages.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from backbone.complexity import Profile, format_table, profile, profile_mobilenet
from backbone.mobilenet import FullConvLayer, SeparableLayer

# Table 2, MobileNet 1.0-224: (mult-add share %, parameter share %). The paper prints 1.19 % for the
# full 3x3 conv's mult-adds; its own totals give 1.91 %, a transposition.
TABLE2 = {"conv1x1": (94.86, 74.59), "depthwise": (3.06, 1.06), "conv3x3": (1.19, 0.02), "fc": (0.18, 24.33)}


@dataclass(frozen=True)
class PaperRow:
    table: str
    model: str
    measure: Callable[[], Profile]
    mult_adds: float  # millions, as printed
    params: float | None  # millions, as printed
    top1: float | None = None


def _one_layer(layer_class: type, channels: int, size: int) -> Profile:
    """Table 3: a single 14x14x512 layer (or its shrunk variants), without the rest of the network."""
    with torch.device("meta"):
        layer = layer_class(channels, channels, stride=1, dilation=1)
        return profile(layer, torch.zeros(1, channels, size, size))


def _net(resolution: int = 224, **options) -> Callable[[], Profile]:
    return partial(profile_mobilenet, resolution=resolution, **options)


PAPER_ROWS = (
    PaperRow("3", "Conv 3x3 (14x14x512)", partial(_one_layer, FullConvLayer, 512, 14), 462, 2.36),
    PaperRow("3", "Depthwise separable", partial(_one_layer, SeparableLayer, 512, 14), 52.3, 0.27),
    PaperRow("3", "  α = 0.75", partial(_one_layer, SeparableLayer, 384, 14), 29.6, 0.15),
    PaperRow("3", "  ρ = 0.714", partial(_one_layer, SeparableLayer, 384, 10), 15.1, 0.15),
    PaperRow("4", "Conv MobileNet", _net(conv="full"), 4866, 29.3, 71.7),
    PaperRow("4", "MobileNet", _net(), 569, 4.2, 70.6),
    PaperRow("5", "0.75 MobileNet", _net(width_mult=0.75), 325, 2.6, 68.4),
    PaperRow("5", "Shallow MobileNet", _net(shallow=True), 307, 2.9, 65.3),
    PaperRow("6", "1.0 MobileNet-224", _net(), 569, 4.2, 70.6),
    PaperRow("6", "0.75 MobileNet-224", _net(width_mult=0.75), 325, 2.6, 68.4),
    PaperRow("6", "0.5 MobileNet-224", _net(width_mult=0.5), 149, 1.3, 63.7),
    PaperRow("6", "0.25 MobileNet-224", _net(width_mult=0.25), 41, 0.5, 50.6),
    PaperRow("7", "1.0 MobileNet-224", _net(224), 569, 4.2, 70.6),
    PaperRow("7", "1.0 MobileNet-192", _net(192), 418, 4.2, 69.1),
    PaperRow("7", "1.0 MobileNet-160", _net(160), 290, 4.2, 67.2),
    PaperRow("7", "1.0 MobileNet-128", _net(128), 186, 4.2, 64.4),
    PaperRow("9", "0.50 MobileNet-160", _net(160, width_mult=0.5), 76, 1.32, 60.2),
)


# Table 12, face attributes: (width, resolution, mean AP %, M mult-adds, M params) as printed; our counts
# use a 40-logit head, one per CelebA attribute. The baseline (86.9 %, 1600 M, 7.5 M) is not a MobileNet.
TABLE12 = ((1.0, 224, 88.7, 568, 3.2), (0.5, 224, 88.1, 149, 0.8), (0.25, 224, 87.2, 45, 0.2),
           (1.0, 128, 88.1, 185, 3.2), (0.5, 128, 87.7, 48, 0.8), (0.25, 128, 86.4, 15, 0.2))  # fmt: skip


def table12_report() -> str:
    rows = []
    for width, resolution, mean_ap, mult_adds, params in TABLE12:
        ours = profile_mobilenet(resolution=resolution, width_mult=width, num_classes=40)
        rows.append((f"{width:.2f} MobileNet-{resolution}", f"{mean_ap:.1f}", f"{mult_adds:g}",
                     f"{ours.mult_adds / 1e6:.1f}", f"{params:g}", f"{ours.params / 1e6:.2f}"))  # fmt: skip
    rows.append(("Baseline (paper)", "86.9", "1600", "", "7.5", ""))
    headers = ("model", "mean AP paper", "M mult-adds paper", "ours", "M params paper", "ours")
    return format_table(headers, rows, left=1)


def table2_report(measured: Profile) -> str:
    shares = measured.shares()
    rows = [
        (kind, f"{paper[0]:.2f}%", f"{shares[kind]['mult_adds']:.2f}%", f"{paper[1]:.2f}%",
         f"{shares[kind]['params']:.2f}%")
        for kind, paper in TABLE2.items()
    ]
    return format_table(("type", "mult-adds paper", "ours", "params paper", "ours (weights only)"), rows)


def paper_report() -> str:
    sections = ["Table 2: share of mult-adds and parameters per layer type, 1.0 MobileNet-224",
                table2_report(profile_mobilenet()), ""]
    rows = []
    for row in PAPER_ROWS:
        ours = row.measure()
        rows.append((
            row.table, row.model, "" if row.top1 is None else f"{row.top1:.1f}",
            f"{row.mult_adds:g}", f"{ours.mult_adds / 1e6:.1f}",
            "" if row.params is None else f"{row.params:g}", f"{ours.params / 1e6:.2f}",
        ))
    sections.append("Tables 3-7 and 9 (million mult-adds and parameters; top-1: the paper's ImageNet figure)")
    sections.append(format_table(
        ("table", "model", "top-1 paper", "M mult-adds paper", "ours", "M params paper", "ours"), rows, left=2
    ))
    sections.append("\nTable 12: face attributes (40-attribute head; mean AP: the paper's CelebA figure)")
    sections.append(table12_report())
    sections.append("\nOur parameters include BatchNorm γ/β and the FC bias; Table 2's shares do not.")
    return "\n".join(sections)


def main_profile(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilenets profile", description="Per-layer parameters and mult-adds of MobileNet v1."
    )
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--conv", choices=("separable", "full"), default="separable")
    parser.add_argument("--shallow", action="store_true")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--paper", action="store_true", help="print Tables 2-7 and 9 beside our counts")
    args = parser.parse_args(argv)
    if args.paper:
        print(paper_report())
        return 0
    try:
        result = profile_mobilenet(
            resolution=args.resolution, width_mult=args.width_mult, conv=args.conv,
            shallow=args.shallow, num_classes=args.num_classes,
        )
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0
