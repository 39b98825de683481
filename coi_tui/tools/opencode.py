"""opencode (sst/opencode). Keeps its session database in ~/.local/share/opencode and its
config in ~/.config/opencode/opencode.json, where coi sets `permission` and `instructions`."""

from __future__ import annotations

from collections.abc import Mapping

from coi_tui.tools.base import SANDBOX_CONTEXT, SettingsPatch, Tool

CONFIG = ".config/opencode/opencode.json"
ALLOW_ALL = {"permission": {"*": "allow"}}


class OpencodeTool(Tool):
    def command(
        self,
        session_id: str,
        *,
        resume: bool,
        resume_id: str | None,
        permission_mode: str,
        context_path: str | None = None,
        options: Mapping[str, str] | None = None,
    ) -> list[str]:
        # COI: plain `opencode`, and `--continue` on resume (its sessions live in its own
        # database, restored with the config dir; `--session ID` is only for `coi tool spec`).
        argv = [self.binary]
        if resume:
            argv.append("--continue")
        return argv

    def settings_patches(
        self, permission_mode: str, context_path: str | None, effort_level: str = ""
    ) -> list[SettingsPatch]:
        # opencode has no permission flag: bypass is a config entry.
        on: dict[str, object] = dict(ALLOW_ALL) if permission_mode != "interactive" else {}
        off: dict[str, object] = dict(ALLOW_ALL) if permission_mode == "interactive" else {}
        if context_path:
            on["instructions"] = [context_path]
        else:  # auto_context turned off: take coi's entry out again
            off["instructions"] = [SANDBOX_CONTEXT]
        return [SettingsPatch(CONFIG, set=on, unset=off)]


OPENCODE = OpencodeTool(
    name="opencode",
    binary="opencode",
    description="opencode (terminal AI coding agent)",
    config_dir=".local/share/opencode",
)
