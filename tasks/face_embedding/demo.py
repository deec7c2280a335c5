"""`mobilenets face-embedding demo`: train briefly on synthetic people, then recognise people never seen.

1. Train with `configs/face_embedding/synthetic.yaml` for at most `--minutes` (or load `--weights`).
2. Write the first photo of each unseen test identity as a gallery folder and index it with the
   same code as `mobilenets face-embedding index`.
3. Query the index with the other photos of those people: top-1 / top-5 identification, next to
   nearest neighbour on raw pixels (what the embedding must beat), the LFW-protocol numbers on the
   test pairs, the ROC curve, and a grid of queries with their matches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tasks.common.io import atomic_write, read_image, write_text_atomic
from tasks.common.lightning_cli import CONFIG_ROOT, run_task_cli
from tasks.face_embedding.commands import IndexInfo, build_index
from tasks.face_embedding.data import TEST_IDENTITY_OFFSET, synthetic_eval_set
from tasks.face_embedding.index import EmbeddingIndex
from tasks.face_embedding.inference import embed_dataset
from tasks.face_embedding.model import load_embedder
from tasks.face_embedding.plots import save_match_grid
from tasks.face_embedding.synthetic import SyntheticFaces, raw_pixel_nn_top1, write_identity_folders

DEFAULT_CONFIG = CONFIG_ROOT / "face_embedding" / "synthetic.yaml"
GRID_QUERIES = 8


def train(config: Path, out: Path, *, minutes: float, max_steps: int | None = None) -> Path:
    """`mobilenets face-embedding fit --config config`, capped at `minutes`; returns an inference checkpoint.

    It runs through the same CLI code as `fit` (run directory, loggers, callbacks, every trainer setting
    of the recipe). `max_steps` replaces the recipe's, so a shorter demo still finishes its schedule.
    """
    from tasks.cli import TASKS  # the task registry; imported here, since it names every task

    seconds = int(minutes * 60)
    max_time = f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"
    args = ["fit", "--config", str(config), f"--trainer.max_time={max_time}"]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={max_steps}")
    started = time.perf_counter()
    trainer = run_task_cli(TASKS["face-embedding"], args).trainer
    print(f"trained {trainer.global_step} steps in {time.perf_counter() - started:.0f} s ({trainer.log_dir})")
    checkpoint = out / "face_embedder.ckpt"
    with atomic_write(checkpoint) as tmp:
        trainer.save_checkpoint(tmp, weights_only=True)  # for inference: no optimiser state
    return checkpoint


def main_demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilenets face-embedding demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--weights", help="skip training and use this face-embedding checkpoint")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="training recipe (LightningCLI YAML)"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="training time limit")
    parser.add_argument("--max-steps", type=int, help="training steps (default: the recipe's)")
    parser.add_argument("--test-identities", type=int, default=100, help="unseen people in the gallery")
    parser.add_argument("--images-per-identity", type=int, default=10, help="photos per unseen person")
    parser.add_argument(
        "--pairs-per-fold", type=int, default=300, help="LFW-style pairs of each kind per fold"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/face-embedding-demo") / time.strftime("%Y%m%d-%H%M%S")
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    weights = (
        Path(args.weights)
        if args.weights
        else train(args.config, args.out, minutes=args.minutes, max_steps=args.max_steps)
    )
    loaded = load_embedder(weights)
    size = loaded.image_size

    gallery_dir = args.out / "gallery"
    write_identity_folders(
        SyntheticFaces(args.test_identities, 1, size=size, identity_offset=TEST_IDENTITY_OFFSET), gallery_dir
    )
    index_dir = args.out / "index"
    build_index(gallery_dir, weights, index_dir)
    index = EmbeddingIndex.load(index_dir)

    test = synthetic_eval_set(
        args.test_identities,
        args.images_per_identity,
        size=size,
        seed=0,
        identity_offset=TEST_IDENTITY_OFFSET,
        pairs_per_fold=args.pairs_per_fold,
    )
    embedded = embed_dataset(loaded.model, test.dataset, desc="embedding test photos")
    probes = np.flatnonzero(np.arange(len(test)) % args.images_per_identity != 0)  # photo 1 is in the gallery
    scores, labels, paths = index.search(embedded.embeddings[probes], 5)
    names = IndexInfo.load(index_dir).identities
    faces = test.dataset
    truth = [faces.identities[faces.labels[i]] for i in probes]
    found = [[names[label] for label in row] for row in labels]
    top1 = float(np.mean([row[0] == t for row, t in zip(found, truth, strict=True)]))
    top5 = float(np.mean([t in row for row, t in zip(found, truth, strict=True)]))
    pixels = raw_pixel_nn_top1(
        SyntheticFaces(
            args.test_identities, args.images_per_identity, size=size, identity_offset=TEST_IDENTITY_OFFSET
        )
    )
    metrics = test.write_report(
        embedded.embeddings,
        args.out,
        prefix="demo",
        extra={"index_top1": top1, "index_top5": top5, "raw_pixel_top1": pixels},
    )

    shown = probes[:: max(1, len(probes) // GRID_QUERIES)][:GRID_QUERIES]
    rows = []
    for query in shown:
        row = int(np.flatnonzero(probes == query)[0])
        matches = [
            (read_image(p), f"{n}\n{s:+.3f}", n == truth[row])
            for p, n, s in zip(paths[row], found[row], scores[row], strict=True)
        ]
        rows.append((faces.image(int(query)), f"query\n{truth[row]}", matches))
    save_match_grid(args.out / "demo_matches.png", rows)
    write_text_atomic(args.out / "demo_summary.txt", _summary(metrics, args.test_identities))
    print(_summary(metrics, args.test_identities))
    print(f"wrote {args.out}/demo_matches.png, demo_roc.png and demo_metrics.json")
    return 0


def _summary(metrics: dict, identities: int) -> str:
    return (
        f"{identities} unseen identities, one gallery photo each:\n"
        f"  identification top-1 {metrics['index_top1']:.1%}  top-5 {metrics['index_top5']:.1%}"
        f"  (raw-pixel nearest neighbour top-1 {metrics['raw_pixel_top1']:.1%})\n"
        f"  LFW protocol: accuracy {metrics['lfw_accuracy']:.1%} ± {metrics['lfw_accuracy_std']:.1%}, "
        f"VAL@FAR=1e-3 {metrics['val_at_far']:.1%}\n"
    )
