"""Our detectors against torchvision's, trained from scratch on the same real-image COCO folder.

    python benchmarks/detection_vs_peer.py [--data data/mnist_digits] [--minutes 5] [--pairs ssd frcnn]
        [--threads 1] [--workers 1] [--ours-args "--model.backbone.width_mult 0.5"]

Pairs: our SSD recipe (`configs/detection/ssd_own_data.yaml`) against `ssdlite320_mobilenet_v3_large`,
our Faster R-CNN recipe (`frcnn_own_data.yaml`) against `fasterrcnn_mobilenet_v3_large_320_fpn`, both
peers with `weights=None, weights_backbone=None`; the Faster R-CNN peer twice, as shipped and with our
recipe's proposal and RoI budget (`frcnn-roi-budget`), and the ratio is to the better. Every run gets
the same wall-clock budget, intra-op threads and loader workers, the same images through the same
loader and augmentation (the recipe's `data.augment`), and is scored afterwards (outside the budget)
by the same COCO evaluation on the val split. Ours trains through the `mobilenets detection fit`
command a user would run; the peers through a plain loop: AdamW, cosine over the budget after a 3 %
warm-up, batch 16 (SSDlite) or 8 (Faster R-CNN), their inputs fixed to the data's image size. The data
set is `mobilenets data mnist-digits`, built on first use. Prints AP, AP50, steps and the ratio ours /
best peer; writes `results.json` and a bar chart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from tasks.common.io import write_text_atomic
from tasks.detection.augment import detection_eval, detection_train
from tasks.detection.data import CocoDetection, detection_collate
from tasks.detection.digits import MARKER_FILE, write_mnist_digits
from tasks.detection.metrics import DetectionResults, evaluate_coco

ROOT = Path(__file__).absolute().parents[1]
RECIPES = {"ssd": "configs/detection/ssd_own_data.yaml", "frcnn": "configs/detection/frcnn_own_data.yaml"}
PEER_BATCH = {"ssd": 16, "frcnn": 8, "frcnn-roi-budget": 8}
PEERS = {"ssd": ["ssd"], "frcnn": ["frcnn", "frcnn-roi-budget"]}
PEER_LR = 0.003
IMAGE_SIZE = 192
NO_FLIP = [{"name": "ColorJitter", "brightness": 0.125, "contrast": 0.5, "saturation": 0.5, "hue": 0.05,
            "p": 0.5}]  # fmt: skip


# Our Faster R-CNN recipe's proposal and RoI budget, given to the second torchvision Faster R-CNN row: as
# shipped, torchvision keeps 2000 proposals an image in training and samples 512 RoIs from them for its
# MLP head, which on 2 CPU cores costs ~10 s a batch of 8.
ROI_BUDGET = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
              "rpn_post_nms_top_n_test", "box_batch_size_per_image")  # fmt: skip


def recipe_roi_budget() -> dict[str, int]:
    import yaml

    frcnn = yaml.safe_load((ROOT / RECIPES["frcnn"]).read_text())["model"]["frcnn"]
    return {key: int(frcnn[key]) for key in ROI_BUDGET}


def build_peer(peer: str, num_classes: int, size: int) -> torch.nn.Module:
    if peer == "ssd":
        model = ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes + 1
        )
    else:
        budget = recipe_roi_budget() if peer == "frcnn-roi-budget" else {}
        model = fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1, **budget
        )
    # Our loader hands over [-1, 1] images at `size`: identity normalisation, no resize.
    model.transform = GeneralizedRCNNTransform(
        size, size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=1, fixed_size=(size, size)
    )
    return model


def train_peer(model, loader: DataLoader, seconds: float) -> int:
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEER_LR)
    warmup, started, steps = 0.03 * seconds, time.monotonic(), 0
    model.train()
    while True:
        for images, targets in loader:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                return steps
            factor = (
                elapsed / warmup if elapsed < warmup else 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
            )
            for group in optimizer.param_groups:
                group["lr"] = PEER_LR * max(factor, 1e-3)
            losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            steps += 1
            if steps % 50 == 0:
                print(f"  peer step {steps}, {elapsed / 60:.1f} min", flush=True)


@torch.no_grad()
def score(model, dataset: CocoDetection, annotation_file: Path) -> dict:
    model.eval()
    results = DetectionResults(dataset.label_to_cat_id)
    for images, targets in DataLoader(dataset, batch_size=16, collate_fn=detection_collate):
        results.add_batch(model(images), targets, input_size=images[0].shape[-2:])
    return evaluate_coco(annotation_file, results.results())


def run_peer(peer: str, data: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_set = CocoDetection(
        data / "train", data / "annotations/instances_train.json",
        transform=detection_train(IMAGE_SIZE, seed=0, random_crop=False, augment=NO_FLIP), train=True,
    )  # fmt: skip
    val_set = CocoDetection(data / "val", data / "annotations/instances_val.json",
                            transform=detection_eval(IMAGE_SIZE))  # fmt: skip
    loader = DataLoader(train_set, batch_size=PEER_BATCH[peer], shuffle=True,
                        collate_fn=detection_collate, num_workers=args.workers,
                        persistent_workers=args.workers > 0, drop_last=True)  # fmt: skip
    model = build_peer(peer, train_set.num_classes, IMAGE_SIZE)
    steps = train_peer(model, loader, args.minutes * 60)
    evaluation = score(model, val_set, data / "annotations/instances_val.json")
    return {"AP": evaluation["AP"], "AP50": evaluation["AP50"], "steps": steps}


def run_ours(pair: str, data: Path, out: Path, args) -> dict:
    """`mobilenets detection fit` then `validate` on its last checkpoint, run inside `out` (its `runs/`)."""
    budget = time.strftime("%H:%M:%S", time.gmtime(args.minutes * 60))
    common = ["--config", str(ROOT / RECIPES[pair]), "--data.root", str(data),
              "--data.num_workers", str(args.workers), "--model.cpu_threads", str(args.threads),
              *shlex.split(args.ours_args)]  # fmt: skip
    command = [sys.executable, "-m", "tasks.cli", "detection"]
    environment = os.environ | {"PYTHONPATH": str(ROOT)}
    out.mkdir(parents=True, exist_ok=True)
    fit = ["fit", *common, "--trainer.max_time", f"00:{budget}",
           "--trainer.check_val_every_n_epoch", "100000",
           "--trainer.enable_progress_bar", "false"]  # fmt: skip
    subprocess.run(command + fit, check=True, cwd=out, env=environment)
    checkpoint = newest(out.glob("runs/detection/*/checkpoints/last.ckpt"))
    subprocess.run(command + ["validate", *common, "--ckpt_path", str(checkpoint)], check=True, cwd=out,
                   env=environment)  # fmt: skip
    metrics = json.loads(newest(out.glob("runs/detection/*/val/metrics.json")).read_text())
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "steps": int(saved["global_step"])}


def newest(paths) -> Path:
    return max(paths, key=lambda p: p.stat().st_mtime)


def ensure_data(path: Path) -> Path:
    if not (path / MARKER_FILE).is_file():
        write_mnist_digits(path)
    return path


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [row["run"] for row in rows]
    ax.bar(
        names, [row["AP"] for row in rows], color=["tab:blue" if "ours" in n else "tab:grey" for n in names]
    )
    ax.set_xticks(range(len(names)), [name.replace(" ", "\n", 1) for name in names])
    ax.set_ylabel("val AP@[.5:.95]")
    ax.set_title("same data, budget and threads")
    for index, row in enumerate(rows):
        ax.text(index, row["AP"], f"{row['AP']:.3f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data/mnist_digits")
    parser.add_argument(
        "--out", type=Path, default=ROOT / f"runs/detection_vs_peer/{time.strftime('%Y%m%d-%H%M%S')}"
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--pairs", nargs="+", choices=tuple(RECIPES), default=["ssd", "frcnn"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ours-args", default="", help="extra overrides for our fit, e.g. an ablation")
    parser.add_argument("--skip-peer", action="store_true", help="train only ours (ablations)")
    args = parser.parse_args()
    data = ensure_data(args.data)
    rows = []
    for pair in args.pairs:
        ours = run_ours(pair, data, args.out / f"ours_{pair}", args) | {"run": f"ours {pair}"}
        rows.append(ours)
        if not args.skip_peer:
            peers = [run_peer(peer, data, args) | {"run": f"torchvision {peer}"} for peer in PEERS[pair]]
            rows.extend(peers)
            ours["ratio"] = ours["AP"] / max(max(peer["AP"] for peer in peers), 1e-9)  # to the best peer
    print(f"\n{'run':<32}{'AP':>8}{'AP50':>8}{'steps':>8}{'ours/best peer':>16}")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        print(f"{row['run']:<32}{row['AP']:>8.3f}{row['AP50']:>8.3f}{row['steps']:>8}{ratio:>16}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "results.json", json.dumps({"args": vars(args) | {"data": str(data),
                      "out": str(args.out)}, "rows": rows}, indent=2))  # fmt: skip
    plot(rows, args.out / "ap.png")
    print(f"wrote {args.out / 'results.json'} and ap.png")


if __name__ == "__main__":
    main()
