"""Agents coi can run. Add one: write a module with a Tool instance and list it in TOOLS."""

from coi_tui.core.errors import UsageError
from coi_tui.tools.aider import AIDER
from coi_tui.tools.base import Tool
from coi_tui.tools.claude import CLAUDE
from coi_tui.tools.codex import CODEX
from coi_tui.tools.dummy import DUMMY
from coi_tui.tools.opencode import OPENCODE
from coi_tui.tools.pi import OMP, PI

TOOLS: dict[str, Tool] = {
    tool.name: tool for tool in (CLAUDE, OPENCODE, AIDER, CODEX, PI, OMP, DUMMY)
}


def get_tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        known = ", ".join(sorted(TOOLS))
        raise UsageError(f"unknown tool '{name}' (choose one of: {known})") from None


__all__ = ["TOOLS", "Tool", "get_tool"]
