"""Time PlaNet's adaptive S2 partition of 1 M clustered photos on one core, and check its invariants.

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/geolocation_partition_speed.py [--photos N]

Photos are drawn like real photo density: 2000 "cities" with Zipf weights and spreads from 1 to 100 km.
Prints the leaf-cell time (`leaf_cell_ids`: s2cell's conversion on arrays) and the partition time for
PlaNet's rule (t_max 10,000 / t_min 50) and GeoEstimation's three partitions (5000/2000/1000 over t_min 50).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tasks.geolocation.cells import contains, leaf_cell_ids, partition


def clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cities = 2000
    lat0 = np.degrees(np.arcsin(rng.uniform(-0.8, 0.95, cities)))
    lon0 = rng.uniform(-180, 180, cities)
    weight = 1 / np.arange(1, cities + 1)
    city = rng.choice(cities, n, p=weight / weight.sum())
    spread = rng.uniform(1, 100, cities)[city] / 111.2
    lat = np.clip(lat0[city] + rng.normal(0, 1, n) * spread, -89.9, 89.9)
    lon = (lon0[city] + rng.normal(0, 1, n) * spread / np.cos(np.radians(lat)) + 180) % 360 - 180
    return lat, lon


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lat, lon = clustered(args.photos)
    start = time.perf_counter()
    leaves = leaf_cell_ids(lat, lon)
    leaf_s = time.perf_counter() - start
    print(f"{args.photos} photos: leaf cell ids in {leaf_s:.2f} s ({args.photos / leaf_s / 1e3:.0f} k/s)")
    for t_max in (10_000, 5000, 2000, 1000):
        start = time.perf_counter()
        part, classes = partition(leaves, lat, lon, t_max=t_max, t_min=50)
        seconds = time.perf_counter() - start
        assert (part.count >= 50).all() and (part.count <= t_max).all()
        assert int(part.count.sum()) + part.dropped == args.photos
        half = (part.cell_id & (~part.cell_id + np.uint64(1))) - np.uint64(1)  # cell id ranges: id +- half
        assert (part.cell_id[:-1] + half[:-1] < part.cell_id[1:] - half[1:]).all()  # disjoint
        kept = classes >= 0
        assert contains(part.cell_id[classes[kept]], leaves[kept]).all()
        print(
            f"t_max {t_max:>6} / t_min 50: {len(part):>6} cells "
            f"(levels {part.level.min()}-{part.level.max()}), "
            f"{part.dropped} photos in dropped cells, partitioned in {seconds:.2f} s "
            f"(total with leaf ids {leaf_s + seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
