"""Flat vs IVF vs HNSW search on `EmbeddingIndex`: build time, queries/s, recall@10 against flat.

    python benchmarks/search_speed.py                       # 100k vectors, uniform and clustered
    python benchmarks/search_speed.py --sizes 100000 1000000 --threads 2

Two kinds of data, because they bracket reality:
  * uniform: Gaussian vectors normalised onto the 128-d sphere. Neighbours are barely nearer than
    everything else, the worst case for any ANN method.
  * clustered: points around 1,000 random centres (noise 0.8 per dimension, centres ~N(0, 1)),
    closer to real face embeddings, which gather by identity.
Each approximate index is swept over its search knob (IVF nprobe, HNSW efSearch); the summary
picks the fastest setting with recall@10 >= --target and reports its speed relative to flat,
all timed in this run on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.face_embedding.index import EmbeddingIndex  # noqa: E402

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256, 512)


def make_data(kind: str, n: int, dim: int, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.standard_normal((n, dim), dtype=np.float32)
    centres = np.random.default_rng(12345).standard_normal((1000, dim), dtype=np.float32)
    offsets = noise * rng.standard_normal((n, dim), dtype=np.float32)
    return centres[rng.integers(len(centres), size=n)] + offsets


def timed_search(index: EmbeddingIndex, queries: np.ndarray, k: int, repeats: int = 3,
                 ) -> tuple[np.ndarray, float]:
    """Labels found and queries/s, best of `repeats` (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _, labels, _ = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return labels, len(queries) / best


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def run(kind: str, n: int, args: argparse.Namespace) -> list[dict]:
    gallery = make_data(kind, n, args.dim, seed=1, noise=args.cluster_noise)
    queries = make_data(kind, args.queries, args.dim, seed=2, noise=args.cluster_noise)
    labels = np.arange(n)
    rows = []

    def build(name: str, **params) -> tuple[EmbeddingIndex, float]:
        start = time.perf_counter()
        index = EmbeddingIndex(args.dim, kind=name, **params)
        index.add(gallery, labels)
        seconds = time.perf_counter() - start
        print(f"  built {name:<5} on {n:,} {kind} vectors in {seconds:.1f}s", flush=True)
        return index, seconds

    flat, flat_build = build("flat")
    truth, flat_qps = timed_search(flat, queries, args.k)
    rows.append({"index": "flat", "knob": "-", "build_s": flat_build, "qps": flat_qps, "recall": 1.0})

    ivf, ivf_build = build("ivf", nlist=args.nlist or int(2 * np.sqrt(n)))
    nlist = ivf.index.nlist  # may have shrunk to what the data supports
    for nprobe in (p for p in NPROBES if p <= nlist):
        ivf.set_search_params(nprobe=nprobe)
        found, qps = timed_search(ivf, queries, args.k)
        rows.append({"index": f"ivf{nlist}", "knob": f"nprobe={nprobe}", "build_s": ivf_build, "qps": qps,
                     "recall": recall_at(found, truth)})

    hnsw, hnsw_build = build("hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    for ef in EF_SEARCHES:
        hnsw.set_search_params(ef_search=ef)
        found, qps = timed_search(hnsw, queries, args.k)
        rows.append({"index": f"hnsw{args.hnsw_m}", "knob": f"efSearch={ef}", "build_s": hnsw_build,
                     "qps": qps, "recall": recall_at(found, truth)})
    for row in rows:
        row["speedup"] = row["qps"] / flat_qps
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--data", choices=["uniform", "clustered", "both"], default="both")
    parser.add_argument("--cluster-noise", type=float, default=0.8, help="per-dimension noise around centres")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (default 2 sqrt(N))")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (default: all cores)")
    parser.add_argument("--target", type=float, default=0.95, help="recall@k the summary asks for")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    kinds = ["uniform", "clustered"] if args.data == "both" else [args.data]
    summary = []
    for n in args.sizes:
        for kind in kinds:
            print(f"\n{kind} data, N={n:,}, dim={args.dim}, {args.queries} queries, "
                  f"{faiss.omp_get_max_threads()} threads", flush=True)
            rows = run(kind, n, args)
            print(f"{'index':<10} {'setting':<14} {'build s':>8} {'queries/s':>10} "
                  f"{'recall@' + str(args.k):>10} {'x flat':>7}")
            for r in rows:
                print(f"{r['index']:<10} {r['knob']:<14} {r['build_s']:>8.1f} {r['qps']:>10.0f} "
                      f"{r['recall']:>10.3f} {r['speedup']:>7.1f}")
            for family in ("ivf", "hnsw"):
                ok = [r for r in rows if r["index"].startswith(family) and r["recall"] >= args.target]
                best = max(ok, key=lambda r: r["qps"], default=None)
                summary.append((kind, n, family, best))

    print(f"\nfastest setting with recall@{args.k} >= {args.target}:")
    for kind, n, family, best in summary:
        if best is None:
            print(f"  {kind:<9} N={n:>9,} {family:<4}: none of the swept settings reaches the target")
        else:
            print(f"  {kind:<9} N={n:>9,} {best['index']:<8} {best['knob']:<14} recall {best['recall']:.3f} "
                  f"{best['qps']:>8.0f} q/s = {best['speedup']:.1f}x flat")


if __name__ == "__main__":
    main()
