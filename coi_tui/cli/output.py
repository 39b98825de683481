"""What every command shares for its own output: notes and warnings go to stderr."""

from __future__ import annotations

import sys


def err(message: str) -> None:
    """One line to stderr (flushed: it must show before a slow step that follows)."""
    print(message, file=sys.stderr, flush=True)
