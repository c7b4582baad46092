"""The one stopwatch and latency summary: predictor stages, evaluation, profile, bench, demo.

Torch-free: a device's pending work is waited for through an optional `sync` callable (the
model layer supplies CUDA's, talk2sam_ros.model.timing.device_sync), so milliseconds measured
around GPU work are GPU time, not kernel-launch time.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

Sync = Callable[[], None] | None
STATS = ("median", "p90", "mean", "min", "max")


class Stopwatch:
    """Wall-clock laps in ms, each since the previous mark; `laps` adds up laps by name.

    `with Stopwatch(sync) as watch:` starts it; `watch.lap("stage")` ends a lap and starts
    the next. Every mark calls `sync` first, so queued device work belongs to the lap.
    """

    def __init__(self, sync: Sync = None, laps: dict[str, float] | None = None) -> None:
        self.sync = sync
        self.laps: dict[str, float] = {} if laps is None else laps
        self._mark = 0.0

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def start(self) -> Stopwatch:
        self._mark = self._now()
        return self

    def lap(self, name: str | None = None) -> float:
        """ms since the last mark (added to laps[name] when named); starts the next lap."""
        now = self._now()
        ms = (now - self._mark) * 1e3
        self._mark = now
        if name is not None:
            self.laps[name] = self.laps.get(name, 0.0) + ms
        return ms

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        return None


@contextmanager
def timed(laps: dict[str, float], name: str, sync: Sync = None) -> Iterator[None]:
    """Add the block's wall time (ms) to laps[name], also when it raises."""
    watch = Stopwatch(sync, laps).start()
    try:
        yield
    finally:
        watch.lap(name)


def summarize(values: Sequence[float], fields: Sequence[str] = STATS, suffix: str = ""
              ) -> dict[str, float]:
    """`fields` of `values` (median, p90 = 90th percentile, mean, min, max) plus n; each key
    but n ends with `suffix` (profile reports "median_ms"). No values: {"n": 0} only."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    stat = {"median": np.median, "p90": lambda a: np.percentile(a, 90), "mean": np.mean,
            "min": np.min, "max": np.max}
    out: dict[str, float] = {f"{name}{suffix}": float(stat[name](arr)) for name in fields}
    out["n"] = int(arr.size)
    return out
