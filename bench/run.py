"""`make bench`: run every bench/bench_*.py module within its time budget, print one table and
write bench/results/latest.json."""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Figure

HERE = Path(__file__).resolve().parent
BUDGET_S = {"bench_core": 240.0}
DEFAULT_BUDGET_S = 120.0


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.3g} {unit}"


def main(only: list[str]) -> int:
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        modules = [m for m in modules if any(o in m for o in only)]
    results: list[Figure] = []
    failures: list[str] = []
    for name in modules:
        started = time.monotonic()
        print(f"== {name} ...", flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            results += module.run(BUDGET_S.get(name, DEFAULT_BUDGET_S))
        except Exception:  # one broken benchmark must not hide the others' figures
            failures.append(name)
            traceback.print_exc()
        print(f"   {name} took {time.monotonic() - started:.0f}s", flush=True)
    print()
    print(f"{'figure':<34} {'median':>12} {'min':>12} {'max':>12} {'n':>4}  target       met")
    for f in results:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        print(
            f"{f.name:<34} {fmt(f.value, f.unit):>12} {fmt(f.min, f.unit):>12} "
            f"{fmt(f.max, f.unit):>12} {f.runs:>4}  {f.target:<12} {met}"
        )
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "figures": [f.as_dict() for f in results],
                "failed_modules": failures,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
