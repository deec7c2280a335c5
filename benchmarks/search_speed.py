"""Flat vs IVF vs HNSW search on `EmbeddingIndex`: build time, queries/s, recall@10 against flat.

    python benchmarks/search_speed.py                       # 100k vectors, uniform and clustered (~3 min)

Two kinds of data, because they bracket reality:
  * uniform: Gaussian vectors normalised onto the 128-d sphere. Neighbours are barely nearer than
    everything else, the worst case for any ANN method.
  * clustered: points around 1,000 random centres (noise 0.8 per dimension, centres ~N(0, 1)),
    closer to real face embeddings, which gather by identity.
Flat (exact IndexFlatIP via `EmbeddingIndex(kind="flat")`) gives the ground truth and the baseline;
every index searches the same batch of 1,000 queries with the same FAISS thread count (default 1,
so timings on a shared machine stay steady and comparable), best of 3 repeats. IVF uses
nlist = 4 sqrt(N) and sweeps nprobe 1..1024; HNSW sweeps efSearch 16..1024. The summary table
picks, per method, the fastest setting with recall@10 >= --target (0.95) and reports its speed
relative to flat, measured in the same run; the issue's target is also >= 5x flat.

1M vectors (run one piece at a time; each stays under ~15 min on a shared 2-core box):

    python benchmarks/search_speed.py --sizes 1000000 --data uniform --methods ivf      # ~4 min
    python benchmarks/search_speed.py --sizes 1000000 --data uniform --methods hnsw     # ~15 min (build 855s)
    python benchmarks/search_speed.py --sizes 1000000 --data clustered --hnsw-m 16      # ~9 min

Results on this machine (2 shared cores, 1 FAISS thread, faiss 1.15.1):

         size  data       method     setting         queries/s  vs flat  recall@10  build s
      100,000  uniform    flat       exact                3121     1.0x      1.000      0.2
      100,000  uniform    ivf1264    nprobe=1024           286     0.1x      0.991      4.7
      100,000  uniform    hnsw32     efSearch=1024         166     0.1x      0.987     56.9
      100,000  clustered  flat       exact                3051     1.0x      1.000      0.0
      100,000  clustered  ivf1264    nprobe=2           100161    32.8x      0.997      4.7
      100,000  clustered  hnsw32     efSearch=16         18904     6.2x      0.974     23.9
    1,000,000  uniform    flat       exact                 259     1.0x      1.000      3.0   (ivf run)
    1,000,000  uniform    flat       exact                 320     1.0x      1.000      2.1   (hnsw run)
    1,000,000  uniform    ivf4000    nprobe=1024           118     0.5x      0.814    167.5
    1,000,000  uniform    hnsw32     efSearch=1024         127     0.4x      0.657    854.6
    1,000,000  clustered  flat       exact                 291     1.0x      1.000      0.5
    1,000,000  clustered  ivf4000    nprobe=8            12711    43.6x      1.000    148.0
    1,000,000  clustered  hnsw16     efSearch=128         2310     7.9x      0.961    321.7

So the target (recall@10 >= 0.95 at >= 5x flat) is met on clustered data at both sizes, by IVF and
HNSW, and on uniform data at neither: there the best recall at >= 5x flat is 0.16 (100k) and 0.22
(1M), both IVF, and 0.95 costs more than exact search (100k) or is not reached at all within the
sweep (1M, best 0.81 at 0.5x flat). Growing N does not rescue uniform
data: flat gets 10x slower from 100k to 1M, but IVF must still scan a large fraction of the lists
(nprobe 1024/4000 = 26% of the data gives 0.81) and HNSW recall at fixed efSearch falls
(efSearch=512: 0.92 at 100k, 0.46 at 1M). Uniform 128-d Gaussians have no neighbourhood structure
to exploit; real embeddings are much closer to the clustered case. At 1M the clustered HNSW uses
M=16 to keep its build near 5 min (M=32 took 14 min on uniform data); its recall levels off at
~0.99 (efSearch 256-1024), IVF reaches 1.000 at nprobe=8.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.face_embedding.index import EmbeddingIndex

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EF_SEARCHES = (16, 32, 64, 128, 256, 512, 1024)


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
        print(f"  built {name:<5} {params or ''} on {n:,} {kind} vectors in {seconds:.1f}s", flush=True)
        return index, seconds

    def add_row(family: str, name: str, knob: str, build_s: float, found: np.ndarray, qps: float) -> None:
        rows.append({"family": family, "index": name, "knob": knob, "build_s": build_s, "qps": qps,
                     "recall": recall_at(found, truth)})
        r = rows[-1]
        print(f"    {name:<9} {knob:<14} {qps:>9.0f} q/s  recall@{args.k} {r['recall']:.3f}", flush=True)

    # Ground truth and the baseline: exact IndexFlatIP, same query batch, same threads.
    flat, flat_build = build("flat")
    truth, flat_qps = timed_search(flat, queries, args.k)
    add_row("flat", "flat", "exact", flat_build, truth, flat_qps)
    del flat

    if "ivf" in args.methods:
        ivf, ivf_build = build("ivf", nlist=args.nlist or int(4 * np.sqrt(n)))
        nlist = ivf.index.nlist  # may have shrunk to what the data supports
        for nprobe in (p for p in args.nprobes if p <= nlist):
            ivf.set_search_params(nprobe=nprobe)
            found, qps = timed_search(ivf, queries, args.k)
            add_row("ivf", f"ivf{nlist}", f"nprobe={nprobe}", ivf_build, found, qps)
        del ivf

    if "hnsw" in args.methods:
        for m in args.hnsw_m:
            hnsw, hnsw_build = build("hnsw", hnsw_m=m, ef_construction=args.ef_construction)
            for ef in args.ef_searches:
                hnsw.set_search_params(ef_search=ef)
                found, qps = timed_search(hnsw, queries, args.k)
                add_row("hnsw", f"hnsw{m}", f"efSearch={ef}", hnsw_build, found, qps)
            del hnsw
    for row in rows:
        row["speedup"] = row["qps"] / flat_qps
    return rows


def summarise(rows: list[dict], target: float, min_speedup: float) -> list[dict]:
    """Flat, then per approximate family the fastest setting with recall >= target (else its best recall)."""
    picked = [dict(rows[0], note="exact baseline")]
    for family in dict.fromkeys(r["family"] for r in rows[1:]):
        family_rows = [r for r in rows if r["family"] == family]
        ok = [r for r in family_rows if r["recall"] >= target]
        if ok:
            best = max(ok, key=lambda r: r["qps"])
            note = "TARGET MET" if best["speedup"] >= min_speedup else f"recall ok, < {min_speedup:g}x flat"
        else:
            best = max(family_rows, key=lambda r: (r["recall"], r["qps"]))
            note = f"recall < {target:g} (best swept)"
        picked.append(dict(best, note=note))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--data", choices=["uniform", "clustered", "both"], default="both")
    parser.add_argument("--methods", nargs="+", choices=["ivf", "hnsw"], default=["ivf", "hnsw"],
                        help="approximate indexes to run (flat always runs: it is the ground truth)")
    parser.add_argument("--cluster-noise", type=float, default=0.8, help="per-dimension noise around centres")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (default 4 sqrt(N))")
    parser.add_argument("--nprobes", type=int, nargs="+", default=list(NPROBES), help="IVF nprobe sweep")
    parser.add_argument("--hnsw-m", type=int, nargs="+", default=[32], help="HNSW M (one build per value)")
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-searches", type=int, nargs="+", default=list(EF_SEARCHES),
                        help="HNSW efSearch sweep")
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS threads for every index (0: all cores); 1: steadier shared-box timings")
    parser.add_argument("--target", type=float, default=0.95, help="recall@k the summary asks for")
    parser.add_argument("--min-speedup", type=float, default=5.0, help="speed vs flat the summary asks for")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    kinds = ["uniform", "clustered"] if args.data == "both" else [args.data]
    summary = []
    for n in args.sizes:
        for kind in kinds:
            print(f"\n{kind} data, N={n:,}, dim={args.dim}, {args.queries} queries, "
                  f"{faiss.omp_get_max_threads()} threads", flush=True)
            started = time.perf_counter()
            rows = run(kind, n, args)
            print(f"{'index':<10} {'setting':<14} {'build s':>8} {'queries/s':>10} "
                  f"{'recall@' + str(args.k):>10} {'x flat':>7}")
            for r in rows:
                print(f"{r['index']:<10} {r['knob']:<14} {r['build_s']:>8.1f} {r['qps']:>10.0f} "
                      f"{r['recall']:>10.3f} {r['speedup']:>7.1f}")
            print(f"({time.perf_counter() - started:.0f}s for this size and data kind)", flush=True)
            summary += [dict(r, n=n, kind=kind) for r in summarise(rows, args.target, args.min_speedup)]

    print(f"\nsummary: fastest setting with recall@{args.k} >= {args.target:g} "
          f"(target: also >= {args.min_speedup:g}x flat); {faiss.omp_get_max_threads()} FAISS threads, "
          f"{args.queries} queries in one batch for every index")
    header = (f"{'size':>9}  {'data':<9}  {'method':<9}  {'setting':<14}  {'queries/s':>9}  "
              f"{'vs flat':>7}  {'recall@' + str(args.k):>9}  {'build s':>7}  note")
    print(header)
    print("-" * len(header))
    for r in summary:
        print(f"{r['n']:>9,}  {r['kind']:<9}  {r['index']:<9}  {r['knob']:<14}  {r['qps']:>9.0f}  "
              f"{r['speedup']:>6.1f}x  {r['recall']:>9.3f}  {r['build_s']:>7.1f}  {r['note']}")


if __name__ == "__main__":
    main()
