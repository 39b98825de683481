"""Durations as coi shows them, the same in `coi overview` and the dashboard (COI's format)."""

from __future__ import annotations


def format_uptime(seconds: float | None) -> str:
    """The two largest units: "2d3h", "4h7m", "12m5s", "30s", "<1s"; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return "<1s"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
