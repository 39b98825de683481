"""`[git] strip_attribution` and `protected_branches`: guardrails for the agent's own git in the
container, through hooks coi owns (root-owned, `core.hooksPath` in the container's system git
config), each of which then runs the repository's own hook of the same name, as git would.

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

from coi_tui.core.errors import CoiError
from coi_tui.sessions.hookspec import LaunchContext, SessionHook

HOOKS_DIR = "/usr/local/lib/coi/git-hooks"
DISPATCHER = "/usr/local/lib/coi/git-hook"
BRANCHES_FILE = "/etc/coi/git-protected-branches"
PATTERNS_FILE = "/etc/coi/git-strip-patterns"
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


class GitHook(SessionHook):
    def before_agent(self, ctx: LaunchContext) -> None:
        settings = ctx.manager.settings
        incus, name = ctx.manager.incus, ctx.session.container
        patterns = list(settings.git_strip_attribution_patterns) or list(DEFAULT_STRIP_PATTERNS)
        if not settings.git_strip_attribution:
            patterns = []
        branches = list(settings.git_protected_branches)
        if not patterns and not branches:
            # a reused container may still have them from an earlier session
            incus.exec_capture(name, ["git", "config", "--system", "--unset", "core.hooksPath"])
            return
        links = " ".join(HOOK_NAMES)
        prepared = incus.exec_capture(
            name,
            [
                "sh",
                "-c",
                f"mkdir -p {HOOKS_DIR} /etc/coi && cd {HOOKS_DIR} && "
                f"for h in {links}; do ln -sfn ../git-hook $h; done",
            ],
        )
        if not prepared.ok:
            raise CoiError(f"could not install coi's git hooks: {prepared.stderr.strip()}")
        incus.push_file(name, DISPATCHER, DISPATCHER_SCRIPT.encode(), mode=0o755)
        incus.push_file(name, BRANCHES_FILE, lines_file(branches))
        incus.push_file(name, PATTERNS_FILE, lines_file(patterns))
        done = incus.exec_capture(name, ["git", "config", "--system", "core.hooksPath", HOOKS_DIR])
        if not done.ok:
            raise CoiError(f"could not install coi's git hooks: {done.stderr.strip()}")


HOOK = GitHook()
