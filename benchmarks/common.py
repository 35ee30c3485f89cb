"""Shared timing helpers for the benchmark scripts (ratios measured side by side, one run)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` after ``warmup`` untimed calls.

    ``fn`` must block until its result is ready (call ``.numpy()`` on tensors).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(name: str, value: float, target: str = "", detail: str = "") -> dict:
    return {"name": name, "value": value, "target": target, "detail": detail}


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    print("| measurement | value | target | detail |")
    print("|---|---|---|---|")
    for r in rows:
        v = r["value"]
        vs = f"{v:.3f}" if isinstance(v, float) else str(v)
        print(f"| {r['name']} | {vs} | {r['target']} | {r['detail']} |")


def have(module: str) -> bool:
    """True when an optional peer package is importable (its rows are skipped otherwise)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def paired(fn, ref, rounds: int) -> tuple[float, float, float]:
    """Median over interleaved rounds of time(fn) / time(ref), and the two median times.

    Interleaving keeps the ratio honest on a machine whose load changes during the run.
    """
    import statistics
    import time

    fn(), ref()
    ratios, ta, tb = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tb.append(t1 - t0)
        ta.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)
