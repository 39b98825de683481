"""COI_TIMING_DEBUG=1: where a command's time goes, printed to stderr when it exits (every
Incus API call, `incus`/`nft` process and session phase, with its start offset and duration).
COI_TIMING_DEBUG_JSON=PATH writes the same records as JSON. Costs nothing when unset."""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

ENABLED = bool(os.environ.get("COI_TIMING_DEBUG") or os.environ.get("COI_TIMING_DEBUG_JSON"))
_ORIGIN = time.monotonic()


@dataclass
class Span:
    kind: str  # incus, exec, phase, hook
    label: str
    start_ms: float
    duration_ms: float
    depth: int


_spans: list[Span] = []
_depth = 0


@contextmanager
def span(kind: str, label: str) -> Iterator[None]:
    """Time a block when timing is on; a plain pass-through otherwise."""
    global _depth
    if not ENABLED:
        yield
        return
    began = time.monotonic()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        now = time.monotonic()
        _spans.append(Span(kind, label, (began - _ORIGIN) * 1000, (now - began) * 1000, _depth))


def report() -> None:
    total_ms = (time.monotonic() - _ORIGIN) * 1000
    ordered = sorted(_spans, key=lambda s: (s.start_ms, s.depth))
    lines = [f"[timing] total {total_ms:8.1f} ms"]
    for item in ordered:
        indent = "  " * item.depth
        lines.append(
            f"[timing] {item.start_ms:8.1f} +{item.duration_ms:7.1f} ms {indent}"
            f"{item.kind}: {item.label}"
        )
    print("\n".join(lines), file=sys.stderr)
    path = os.environ.get("COI_TIMING_DEBUG_JSON")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"total_ms": total_ms, "spans": [asdict(s) for s in ordered]}, out, indent=1)


if ENABLED:
    atexit.register(report)
