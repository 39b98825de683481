"""Writing TOML by hand: a value and a key as they appear on the right and left of `=`.

Used to render `coi config show`, `coi profile show` and the documented profile starter; the
standard library reads TOML (tomllib) but does not write it.
"""

from __future__ import annotations

import json
import re
from typing import Any

BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """One value in TOML syntax: booleans, numbers, lists and inline tables; anything else
    becomes a quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def toml_key(name: str) -> str:
    """A bare key when TOML allows one, else a quoted key."""
    return name if BARE_KEY_RE.match(name) else json.dumps(name, ensure_ascii=False)
