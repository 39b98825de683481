"""What every benchmark module shares. A module `bench/bench_<area>.py` defines
`run(budget_s: float) -> list[Figure]` and finishes within its time budget; `make bench`
(bench/run.py) runs them all, prints one table and writes bench/results/latest.json."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    name: str
    value: float  # the median for repeated measurements
    unit: str
    runs: int = 1
    min: float | None = None
    max: float | None = None
    target: str = ""  # e.g. "<= 1.5" or "< 0.150"; shown next to the figure
    met: bool | None = None
    baseline: str = ""  # for ratios: the name of the figure divided by
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample(fn: Callable[[], Any], runs: int, budget_s: float | None = None) -> list[float]:
    """Wall-clock seconds of `runs` calls of fn (fewer if the budget runs out, at least 1)."""
    times: list[float] = []
    started = time.monotonic()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget_s is not None and time.monotonic() - started > budget_s:
            break
    return times


def figure(
    name: str,
    times: list[float],
    unit: str = "s",
    target: str = "",
    limit: float | None = None,
    **kwargs: Any,
) -> Figure:
    """A Figure from samples: median value, min, max; met when median <= limit."""
    value = statistics.median(times)
    met = None if limit is None else value <= limit
    return Figure(name, value, unit, len(times), min(times), max(times), target, met, **kwargs)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
