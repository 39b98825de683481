"""The root-owned files `coi setup` installs and the sudo rules that let the incus-admin group
run exactly coi's own privileged helpers (coi-netctl, the monitor launcher).

On a machine without sudo (a bare root-only machine: no sudo package, no /etc/sudoers.d) the
rules are skipped with one line: root runs the helpers in-process and needs none of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write

SUDOERS_DIR = Path("/etc/sudoers.d")
ADMIN_GROUP = "incus-admin"


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_visudo() -> str | None:
    found = shutil.which("visudo")
    if found:
        return found
    return next((p for p in ("/usr/sbin/visudo", "/sbin/visudo") if _executable(p)), None)


def sudo_missing_reason() -> str | None:
    """Why sudo rules cannot be installed here, or None when they can."""
    if shutil.which("sudo") is None:
        return "sudo is not installed"
    if find_visudo() is None:
        return "visudo is not installed"
    if not SUDOERS_DIR.is_dir():
        return f"{SUDOERS_DIR} does not exist"
    return None


def install_root_file(path: Path, text: str, mode: int) -> bool:
    """Atomic write owned by root with `mode`; False when that content was already there."""
    if path.is_file() and path.read_text() == text and (path.stat().st_mode & 0o7777) == mode:
        st = path.stat()
        if st.st_uid == 0 and st.st_gid == 0:
            return False
    atomic_write(path, text, mode, owner=(0, 0))
    return True


def sudo_rule_text(command: Path, purpose: str, group: str = ADMIN_GROUP) -> str:
    return f"# coi: {purpose}\n%{group} ALL=(root) NOPASSWD: {command}\n"


def install_sudo_rule(
    name: str, command: Path, purpose: str, label: str, group: str = ADMIN_GROUP
) -> str:
    """Install /etc/sudoers.d/<name> for exactly `command`, checked by visudo first.
    Returns the report line; a machine without sudo gets a `skip` line, never an error."""
    reason = sudo_missing_reason()
    if reason is not None:
        return (
            f"  [   skip] {label}: {reason}, so only root can use it "
            "(install sudo and run 'coi setup' again to let incus-admin users in)"
        )
    visudo = find_visudo()
    assert visudo is not None
    rule = sudo_rule_text(command, purpose, group)
    with tempfile.NamedTemporaryFile("w", suffix=".sudoers", delete=False) as handle:
        handle.write(rule)
    try:
        check = subprocess.run([visudo, "-cf", handle.name], capture_output=True, text=True)
        if check.returncode != 0:
            detail = (check.stdout + check.stderr).strip().splitlines()
            raise CoiError(f"visudo rejected the rule for {command}: {' '.join(detail[-1:])}")
    finally:
        os.unlink(handle.name)
    path = SUDOERS_DIR / name
    changed = install_root_file(path, rule, 0o440)
    return f"  [{'created' if changed else 'ok':>7}] {label}: {path} (%{group})"
