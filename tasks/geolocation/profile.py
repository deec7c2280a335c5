"""Parameters and mult-adds of PlaNet on MobileNet next to the paper's §4.4 figures.

The paper: 13 M parameters (3 M body, 10 M final layer), about 0.58 billion mult-adds. The body at
α = 1 is 3.2 M parameters and 568 M mult-adds at 224 (REFERENCE §1); the final layer is 1025 weights per
cell (1024 inputs and a bias) and 1024 mult-adds per cell, so N cells give 3.2 M + 1.025 N parameters
and 568 M + 1.02 N mult-adds: N of about 9,800 reproduces both figures (PlaNet's own 26,263 cells
would make a 30 M-parameter, 595 M-mult-add network).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from backbone import MobileNetV1
from backbone.complexity import profile
from tasks.geolocation.model import PlaNet

PAPER = {
    "million_params": 13.0,
    "million_body_params": 3.0,
    "million_head_params": 10.0,
    "billion_mult_adds": 0.58,
}
PAPER_LIKE_CELLS = 9800


@dataclass
class PlanetProfile:
    cells: list[int]
    width_mult: float
    image_size: int
    params: int
    body_params: int
    head_params: int
    mult_adds: int

    def table(self) -> str:
        return "\n".join(
            [
                f"PlaNet-MobileNet (α={self.width_mult}, {self.image_size}px, cells {self.cells})",
                f"{'':12}{'params (M)':>12}{'body (M)':>10}{'head (M)':>10}{'mult-adds (B)':>15}",
                f"{'measured':12}{self.params / 1e6:12.2f}{self.body_params / 1e6:10.2f}"
                f"{self.head_params / 1e6:10.2f}{self.mult_adds / 1e9:15.3f}",
                f"{'paper §4.4':12}{PAPER['million_params']:12.1f}{PAPER['million_body_params']:10.1f}"
                f"{PAPER['million_head_params']:10.1f}{PAPER['billion_mult_adds']:15.2f}",
            ]
        )


def profile_planet(cells: Sequence[int], *, width_mult: float = 1.0, image_size: int = 224) -> PlanetProfile:
    with torch.device("meta"):
        network = PlaNet(MobileNetV1(width_mult=width_mult, num_classes=0), list(cells))
        counts = profile(network, torch.zeros(1, 3, image_size, image_size), forward=lambda m, x: m(x))
    body = sum(p.numel() for p in network.backbone.parameters())
    heads = sum(p.numel() for p in network.heads.parameters())
    return PlanetProfile(list(cells), width_mult, image_size, body + heads, body, heads, counts.mult_adds)


def main(argv: Sequence[str] | None = None) -> int:
    """`mobilenets geolocation profile [--cells N [N ...]] [--width-mult A] [--image-size S] [--json]`."""
    parser = argparse.ArgumentParser(
        prog="mobilenets geolocation profile",
        description="PlaNet-MobileNet params and mult-adds against §4.4.",
    )
    parser.add_argument("--model", choices=["planet"], default="planet", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cells",
        type=int,
        nargs="+",
        default=[PAPER_LIKE_CELLS],
        help=f"cells per partition (default {PAPER_LIKE_CELLS}: the paper's 13 M / 0.58 B)",
    )
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.cells):
        parser.error("--cells must be positive")
    result = profile_planet(args.cells, width_mult=args.width_mult, image_size=args.image_size)
    print(json.dumps(asdict(result), indent=2) if args.json else result.table())
    return 0
