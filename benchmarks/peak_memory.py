"""What the memory benchmarks (`memory_coco.py`, `memory_geolocation.py`; issue 16: a data module on a
full-size annotation file must stay under 2 GiB) measure the same way.

The measuring is done in a fresh child process (`run_child`), so the peak is the data module's own and
not that of writing the synthetic file. Peaks are VmHWM, the high-water mark of resident memory, of the
main process after set-up and after iterating, and of each loader worker (forked workers share the
parent's pages until they touch them, so a worker's peak shows what iterating copied).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

LIMIT_GIB = 2.0


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The options every memory benchmark takes; `--measure DIR` runs the measuring child on a built set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the measuring child
    return parser


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of a process from /proc, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def measure_setup(build: Callable[[], object]) -> tuple[object, dict]:
    """`build()` (the data module, set up), with the resident memory before and the peak after it."""
    start_rss = peak_rss_mib()
    started = time.perf_counter()
    built = build()
    return built, {
        "rss_at_start_mib": round(start_rss),
        "setup_s": round(time.perf_counter() - started, 1),
        "peak_rss_after_setup_mib": round(peak_rss_mib()),
    }


def measure_iteration(loader, batches: int, count: Callable[[object], dict[str, int]]) -> dict:
    """Iterate `batches` batches of `loader`, totalling `count(batch)` (e.g. images and boxes), and the
    peaks of this process and of each worker, read while the workers are alive."""
    iterator = iter(loader)
    totals: Counter = Counter()
    started = time.perf_counter()
    for _ in range(batches):
        totals.update(count(next(iterator)))
    seconds = time.perf_counter() - started
    workers = [round(peak_rss_mib(w.pid)) for w in getattr(iterator, "_workers", [])]
    return {
        **{f"iterated_{what}": n for what, n in totals.items()},
        "iterate_s": round(seconds, 1),
        "peak_rss_after_iterating_mib": round(peak_rss_mib()),
        "worker_peak_rss_mib": workers,
    }


def run_child(script: str, args: list[str]) -> dict:
    """Run `script` with `args` (its `--measure` mode) in a fresh interpreter; its last stdout line is the
    JSON report."""
    child = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"measuring child failed ({child.returncode}):\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_report(report: dict) -> int:
    """Print every figure and the verdict against `LIMIT_GIB`; the exit status (1: over the limit)."""
    for key, value in report.items():
        print(f"{key:>30}: {value}")
    peak = max([report["peak_rss_after_iterating_mib"], *report["worker_peak_rss_mib"]])
    verdict = "OK" if peak < LIMIT_GIB * 1024 else "OVER"
    print(f"peak resident memory of any process: {peak} MiB ({verdict}: limit {LIMIT_GIB:.0f} GiB)")
    return 0 if verdict == "OK" else 1
