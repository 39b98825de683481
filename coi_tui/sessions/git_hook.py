"""The agent's git in the container.

- identity: `[git] name` + `email` (both or neither), else with `seed_host_identity` (the
  default) the host user's global user.name/user.email, as the code user's git identity.
- readonly: that identity is pinned instead: written to the system config (root-owned), set
  in the agent's GIT_AUTHOR_*/GIT_COMMITTER_* environment, and a commit made under another
  name is re-stamped by the post-commit hook; no identity at all stops the launch.

The rest are guardrails through hooks coi owns (root-owned, `core.hooksPath` in the
container's system git config), each of which then runs the repository's own hook of the same
name, as git would.

- strip_attribution (default on): prepare-commit-msg and commit-msg remove the lines that
  credit an agent (a `Co-Authored-By:` trailer naming one, "Generated with <agent>") from the
  message; `strip_attribution_patterns` (extended regular expressions, case-insensitive)
  replace the built-in ones. prepare-commit-msg also runs under `git commit --no-verify`.
- protected_branches (default none; COI's next release protects main and master): the
  reference-transaction hook refuses any update of such a branch to a commit that no
  remote-tracking branch contains (a commit, merge, rebase, reset or amend made here; a
  deletion), so fetching and fast-forwarding to upstream still work; pre-push refuses pushes
  to such a branch of a remote.

These hold against a well-meaning agent, not a hostile one: container root, `git -c
core.hooksPath=`, or a repository whose own config sets core.hooksPath (husky does) are
beyond them. The security boundary stays the container and the host-side protections."""

from __future__ import annotations

import subprocess

from coi_tui.config import Settings
from coi_tui.core.errors import CoiError
from coi_tui.sessions.hookspec import LaunchContext, SessionHook

HOOKS_DIR = "/usr/local/lib/coi/git-hooks"
DISPATCHER = "/usr/local/lib/coi/git-hook"
BRANCHES_FILE = "/etc/coi/git-protected-branches"
PATTERNS_FILE = "/etc/coi/git-strip-patterns"
IDENTITY_FILE = "/etc/coi/git-identity"  # readonly: the pinned name and email, one a line
# Agents' credit lines, matched case-insensitively (grep -Ei).
DEFAULT_STRIP_PATTERNS = (
    r"^co-authored-by:.*(claude|anthropic|opencode|aider|codex|openai|copilot|gemini|cursor)",
    r"generated (with|by) .*(claude|opencode|aider|codex|copilot|gemini|cursor)",
)
# Every hook git 2.39 runs through core.hooksPath (fsmonitor-watchman is core.fsmonitor's).
HOOK_NAMES = (
    "applypatch-msg", "pre-applypatch", "post-applypatch", "pre-commit", "pre-merge-commit",
    "prepare-commit-msg", "commit-msg", "post-commit", "pre-rebase", "post-checkout",
    "post-merge", "pre-push", "pre-receive", "update", "proc-receive", "post-receive",
    "post-update", "reference-transaction", "push-to-checkout", "pre-auto-gc", "post-rewrite",
    "sendemail-validate", "p4-changelist", "p4-prepare-changelist", "p4-post-changelist",
    "p4-pre-submit", "post-index-change",
)  # fmt: skip

DISPATCHER_SCRIPT = rf"""#!/bin/sh
# coi's git hooks ([git] strip_attribution, protected_branches): its checks, then the
# repository's own hook of the same name. Written by coi at each session start.
name=${{0##*/}}
branches={BRANCHES_FILE}
patterns={PATTERNS_FILE}
identity={IDENTITY_FILE}

refuse() {{
    echo "coi: '$1' is a protected branch in this session ([git] protected_branches):" \
        "work on a branch of your own (git switch -c NAME)" >&2
    exit 1
}}

protected() {{
    [ -s "$branches" ] && grep -Fxq -- "$1" "$branches"
}}

strip() {{
    [ -s "$patterns" ] && [ -f "$1" ] || return 0
    kept=$(grep -Eiv -f "$patterns" -- "$1")
    printf '%s\n' "$kept" > "$1"
}}

case "$name" in
prepare-commit-msg|commit-msg)
    strip "$1" ;;
reference-transaction)
    input=$(cat)
    if [ "$1" = prepared ]; then
        while read -r old new ref; do
            case "$ref" in refs/heads/*) ;; *) continue ;; esac
            branch=${{ref#refs/heads/}}
            protected "$branch" || continue
            case "$new" in *[!0]*) ;; *) refuse "$branch" ;; esac
            upstream=$(git for-each-ref --contains "$new" --count=1 --format=x refs/remotes)
            [ -n "$upstream" ] || refuse "$branch"
        done <<EOF
$input
EOF
    fi ;;
post-commit)
    if [ -s "$identity" ]; then
        pinned_name=$(sed -n 1p "$identity"); pinned_email=$(sed -n 2p "$identity")
        stamp="$pinned_name <$pinned_email>"
        if [ "$(git log -1 --format='%an <%ae>|%cn <%ce>')" != "$stamp|$stamp" ]; then
            GIT_AUTHOR_NAME=$pinned_name GIT_AUTHOR_EMAIL=$pinned_email \
            GIT_COMMITTER_NAME=$pinned_name GIT_COMMITTER_EMAIL=$pinned_email \
                git commit -q --amend --allow-empty --no-edit --no-verify --reset-author
        fi
    fi ;;
pre-push)
    input=$(cat)
    while read -r local_ref local_sha remote_ref remote_sha; do
        case "$remote_ref" in refs/heads/*) protected "${{remote_ref#refs/heads/}}" &&
            refuse "${{remote_ref#refs/heads/}}" ;; esac
    done <<EOF
$input
EOF
    ;;
esac

own="$(git rev-parse --git-common-dir 2>/dev/null)/hooks/$name"
[ -x "$own" ] || exit 0
case "$name" in
reference-transaction|pre-push) printf '%s\n' "$input" | "$own" "$@"; exit $? ;;
esac
exec "$own" "$@"
"""


def lines_file(items: list[str]) -> bytes:
    return "".join(f"{item}\n" for item in items).encode()


def host_git_identity() -> tuple[str, str]:
    """The host user's global git user.name and user.email ("" where unset or no git)."""
    values = []
    for key in ("user.name", "user.email"):
        try:
            done = subprocess.run(
                ["git", "config", "--global", "--get", key],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return "", ""
        values.append(done.stdout.strip() if done.returncode == 0 else "")
    return values[0], values[1]


def identity(settings: Settings) -> tuple[str, str]:
    """(name, email) the agent commits as; ("", "") for git's own default."""
    if settings.git_name:
        return settings.git_name, settings.git_email  # both or neither (settings.py)
    if settings.git_seed_host_identity:
        name, email = host_git_identity()
        if name and email:
            return name, email
    return "", ""


class GitHook(SessionHook):
    def agent_env(self, ctx: LaunchContext, env: dict[str, str]) -> None:
        settings = ctx.manager.settings
        if not settings.git_readonly:
            return
        name, email = identity(settings)
        if not name:
            raise CoiError(
                "[git] readonly pins the agent's git identity, and there is none: set [git] "
                "name and email, or user.name and user.email in your own git config"
            )
        for role in ("AUTHOR", "COMMITTER"):
            env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = name, email

    def before_agent(self, ctx: LaunchContext) -> None:
        """Everything in one root exec (each exec costs ~80 ms of a session's start): the
        values travel in its environment, never in the script's text."""
        settings = ctx.manager.settings
        name, email = identity(settings)
        patterns = list(settings.git_strip_attribution_patterns) or list(DEFAULT_STRIP_PATTERNS)
        if not settings.git_strip_attribution:
            patterns = []
        branches = list(settings.git_protected_branches)
        pinned = settings.git_readonly
        env = {
            "COI_NAME": name,
            "COI_EMAIL": email,
            "COI_PINNED": "1" if pinned else "",
            "COI_UID": str(settings.code_uid),
            "COI_HOOKS": "1" if (patterns or branches or pinned) else "",
            "COI_DISPATCHER": DISPATCHER_SCRIPT,
            "COI_BRANCHES": lines_file(branches).decode(),
            "COI_PATTERNS": lines_file(patterns).decode(),
            "COI_IDENTITY": lines_file([name, email] if pinned else []).decode(),
            "HOME": "/root",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        done = ctx.manager.incus.exec_capture(
            ctx.session.container, ["sh", "-c", SETUP_SCRIPT], env=env
        )
        if not done.ok:
            raise CoiError(f"could not set up the agent's git: {done.stderr.strip()[-300:]}")


# The container side of before_agent, run as root. As code (setpriv, as the agent runs):
# its identity unless pinned, and user.useConfigOnly as COI (no commit under git's guess).
SETUP_SCRIPT = f"""set -e
home=$(getent passwd "$COI_UID" | cut -d: -f6)
as_code() {{
    HOME="${{home:-/home/code}}" setpriv --reuid="$COI_UID" --regid="$COI_UID" --init-groups "$@"
}}
if [ -n "$COI_NAME" ]; then
    if [ -n "$COI_PINNED" ]; then
        git config --system user.name "$COI_NAME"; git config --system user.email "$COI_EMAIL"
    else
        as_code git config --global user.name "$COI_NAME"
        as_code git config --global user.email "$COI_EMAIL"
    fi
fi
as_code git config --global user.useConfigOnly true || true  # a code user without a home
if [ -z "$COI_HOOKS" ]; then
    git config --system --unset core.hooksPath || true  # a reused container's earlier ones
    exit 0
fi
mkdir -p {HOOKS_DIR} /etc/coi
for h in {" ".join(HOOK_NAMES)}; do ln -sfn ../git-hook {HOOKS_DIR}/$h; done
printf '%s' "$COI_DISPATCHER" > {DISPATCHER} && chmod 755 {DISPATCHER}
printf '%s' "$COI_BRANCHES" > {BRANCHES_FILE}
printf '%s' "$COI_PATTERNS" > {PATTERNS_FILE}
printf '%s' "$COI_IDENTITY" > {IDENTITY_FILE}
git config --system core.hooksPath {HOOKS_DIR}
"""


HOOK = GitHook()
