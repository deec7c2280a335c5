"""How far raw pixels get on the synthetic fine-grained set: nearest neighbours vs chance.

The synthetic classes differ only in small parts while pose, background and lighting vary,
so a nearest neighbour on pixels should sit near chance; if it does not, the set is too easy
to stand in for Stanford Dogs. Prints one table row per (k, pixel space).

    python benchmarks/finegrained_pixel_nn.py --classes 24 --train-per-class 300 --val-per-class 40 --size 64
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from tasks.finegrained.synthetic import SyntheticFineGrained


def render_split(dataset: SyntheticFineGrained) -> tuple[torch.Tensor, torch.Tensor]:
    images = [dataset.image(i)[0] for i in tqdm(range(len(dataset)), desc=f"render {dataset.split}")]
    labels = torch.arange(len(dataset)) % dataset.num_classes
    return torch.from_numpy(np.stack(images)).float(), labels


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    val: torch.Tensor,
    val_labels: torch.Tensor,
    ks: list[int],
    num_classes: int,
) -> dict[int, float]:
    """Top-1 of a majority vote among the k nearest training images (Euclidean), for each k."""
    neighbours = []
    for start in range(0, len(val), 256):
        distances = torch.cdist(val[start : start + 256], train)
        neighbours.append(distances.topk(max(ks), dim=1, largest=False).indices)
    votes_of = train_labels[torch.cat(neighbours)]
    accuracy = {}
    for k in ks:
        votes = torch.nn.functional.one_hot(votes_of[:, :k], num_classes).sum(1)
        accuracy[k] = (votes.argmax(1) == val_labels).float().mean().item()
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=24)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    args = parser.parse_args()

    def split(name: str, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        return render_split(
            SyntheticFineGrained(args.classes, per_class, size=args.size, seed=args.seed, split=name)
        )

    train, train_labels = split("train", args.train_per_class)
    val, val_labels = split("val", args.val_per_class)
    # Raw RGB, and per-image standardised grey: the second removes lighting and background colour.
    spaces = {
        "rgb": (train.flatten(1), val.flatten(1)),
        "grey, standardised": tuple(_standardise(x.mean(-1).flatten(1)) for x in (train, val)),
    }
    print(
        f"{args.classes} classes, {len(train)} train / {len(val)} val images at {args.size} px; "
        f"chance {1 / args.classes:.1%}"
    )
    print(f"{'pixels':<20} " + " ".join(f"{f'{k}-NN':>7}" for k in args.k))
    for name, (train_x, val_x) in spaces.items():
        accuracy = knn_accuracy(train_x, train_labels, val_x, val_labels, args.k, args.classes)
        print(f"{name:<20} " + " ".join(f"{accuracy[k]:>7.1%}" for k in args.k))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


if __name__ == "__main__":
    main()
