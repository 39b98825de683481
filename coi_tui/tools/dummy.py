"""The fake agent baked into coi images: behaves like the claude CLI, needs no API key."""

from coi_tui.tools.claude import CLAUDE, ClaudeTool

DUMMY = ClaudeTool(
    name="dummy",
    binary="dummy",
    description="Test double that behaves like the claude CLI (no API key)",
    config_dir=".claude",
    context_file=".claude/CLAUDE.md",
    host_files=CLAUDE.host_files,
)
