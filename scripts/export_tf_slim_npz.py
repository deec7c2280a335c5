"""Export a TF-slim MobileNet v1 checkpoint to an `.npz` that `backbone.load_weights` reads.

TensorFlow is needed here and nowhere else (`pip install tensorflow` in a separate environment):

    python scripts/export_tf_slim_npz.py mobilenet_v1_1.0_224.ckpt mobilenet_v1_1.0_224.npz

The arrays keep their TF names and layouts (`MobilenetV1/Conv2d_0/weights`, HWIO; 1001 logits with
class 0 = background). Optimiser slots and the step counter are left out; `--ema` takes each
variable's exponential moving average instead of its raw value where the checkpoint has one.
Then build the model with `tf_padding=True` so that it pads like TF's "SAME".
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.common.io import atomic_write  # noqa: E402

SCOPE = "MobilenetV1/"
EMA_SUFFIX = "/ExponentialMovingAverage"
SLOT = re.compile(r"/(RMSProp(_1)?|Momentum|Adam(_1)?)$")


def select_variables(names: list[str], *, ema: bool) -> dict[str, str]:
    """Exported name -> checkpoint name, for the model's own variables only."""
    available = set(names)
    chosen = {}
    for name in names:
        if not name.startswith(SCOPE) or name.endswith(EMA_SUFFIX) or SLOT.search(name):
            continue
        chosen[name] = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in available else name
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint prefix, e.g. mobilenet_v1_1.0_224.ckpt")
    parser.add_argument("out", type=Path)
    parser.add_argument("--ema", action="store_true", help="use the moving averages where present")
    args = parser.parse_args(argv)

    import tensorflow as tf

    reader = tf.train.load_checkpoint(args.checkpoint)
    chosen = select_variables(sorted(reader.get_variable_to_shape_map()), ema=args.ema)
    if not chosen:
        parser.error(f"{args.checkpoint} has no variables under {SCOPE!r}: not a TF-slim MobileNet v1")
    arrays = {name: np.asarray(reader.get_tensor(src), dtype=np.float32) for name, src in chosen.items()}
    with atomic_write(args.out) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)
    print(f"wrote {len(arrays)} arrays to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
