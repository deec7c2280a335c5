"""`mobilenets face-attributes export-logits`: a teacher's logits for every image, as a distillation file.

    export-logits --weights TEACHER.ckpt --out FILE.npz (--images DIR | --synthetic SPLIT:COUNT ...)

The file is `tasks.common.teacher`'s outputs table: `paths` (keys: image paths relative to DIR, or the
synthetic set's `<split>/<index>.png`) and `outputs` (float32 logits, one column per attribute, in the
teacher's attribute order). The teacher sees its own input size, read from its checkpoint. A student
trains on it with `model.teacher: {kind: outputs, file: FILE.npz}`; images that do not decode are
skipped and counted, never written under another image's key.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tasks.common.teacher import write_outputs_file
from tasks.face_attributes.data import UnlabeledImages, collate_readable, face_eval_transform
from tasks.face_attributes.model import load_attribute_model
from tasks.face_attributes.synthetic import SPLITS, SyntheticAttributeFaces


@torch.no_grad()
def teacher_logits(model: torch.nn.Module, loader: DataLoader, *, desc: str) -> tuple[list[str], np.ndarray]:
    keys: list[str] = []
    outputs: list[np.ndarray] = []
    for batch in tqdm(loader, desc=desc, unit="batch"):
        if batch is None:
            continue
        images, batch_keys = batch[0], batch[-1]
        outputs.append(model(images).float().numpy())
        keys += list(batch_keys)
    return keys, np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


class _KeyedSynthetic(SyntheticAttributeFaces):
    """The synthetic faces as `(image, key)`: the labels stay unread."""

    def __getitem__(self, index: int):
        return self._tensor(self.image(index)), self.key(index)


def _synthetic_spec(text: str) -> tuple[str, int]:
    split, _, count = text.partition(":")
    if split not in SPLITS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"want SPLIT:COUNT with SPLIT in {sorted(SPLITS)}, got {text!r}")
    return split, int(count)


def main_export_logits(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilenets face-attributes export-logits",
        description="Write a teacher's attribute logits (.npz of paths and outputs) for "
        "`model.teacher: {kind: outputs, file: ...}`.",
    )
    parser.add_argument("--weights", required=True, help="the teacher's face-attributes checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help=".npz to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of face images, any depth (keys: paths relative to it)")
    source.add_argument(
        "--synthetic",
        type=_synthetic_spec,
        action="append",
        metavar="SPLIT:COUNT",
        help="the first COUNT faces of a synthetic split (repeatable: --synthetic unlabeled:20000 "
        "--synthetic val:1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the synthetic set's seed (data.synthetic.seed)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=1, help="processes that read or render images")
    args = parser.parse_args(argv)
    try:
        loaded = load_attribute_model(args.weights)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    size = loaded.image_size
    if args.images:
        try:
            datasets = [
                UnlabeledImages(args.images, transform=face_eval_transform(size), drop_unreadable=True)
            ]
        except FileNotFoundError as err:
            parser.error(str(err))
    else:
        datasets = [
            _KeyedSynthetic(count, size=size, seed=args.seed, split=split) for split, count in args.synthetic
        ]
    start = time.perf_counter()
    keys: list[str] = []
    outputs = []
    for dataset in datasets:
        loader = DataLoader(
            dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_readable
        )
        split_keys, split_outputs = teacher_logits(
            loaded.model, loader, desc=f"teacher logits ({len(dataset)})"
        )
        keys += split_keys
        outputs.append(split_outputs)
    if not keys:
        parser.error("no readable image to export")
    rows = write_outputs_file(args.out, keys, np.concatenate(outputs))
    skipped = sum(len(getattr(d, "skipped", ())) for d in datasets)
    print(
        f"wrote {rows} teacher logits ({len(loaded.attributes)} attributes, {size} px) to {args.out} "
        f"in {time.perf_counter() - start:.0f} s; skipped {skipped} unreadable images"
    )
    return 0
