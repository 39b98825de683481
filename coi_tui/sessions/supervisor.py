"""Per-session supervisor: a detached process that waits for the container to stop (poweroff
from inside, or the monitor's kill) and then saves the session and removes an ephemeral
container. `coi shell` starts one for every session; a second one for the same container exits.

The threat monitor's kill ends here: the root daemon only freezes the container, tags it
(`monitor.config.KILLED_KEY`) and force-stops it; this process, running as the user, saves
the session and deletes the container, persistent or not (`finalize_if_stopped`), so nothing
of the session code ever runs as root.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from typing import Any

from coi_tui.config import load_settings
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import file_lock
from coi_tui.core.paths import locks_dir
from coi_tui.incus import Incus, InstanceNotFound
from coi_tui.sessions.hooks import run_hooks
from coi_tui.sessions.manager import SessionManager
from coi_tui.sessions.workspace_guard import patrol

GUARD_PATROL_SECONDS = 10.0
TAKEOVER_SECONDS = 10.0  # see take_over
STOP_ACTIONS = {"instance-stopped", "instance-shutdown", "instance-deleted", "instance-restarted"}


def say(message: str) -> None:
    print(f"[supervisor] {message}", flush=True)


def wait_for_stop(incus: Incus, name: str, deadline: float | None = None) -> bool:
    """Block until the container is stopped or gone (True), or until `deadline` (monotonic
    time) passes (False): lifecycle events, with a slow poll as a safety net in case the
    events stream drops."""
    stopped = threading.Event()

    def on_event(event: dict[str, Any]) -> bool:
        meta = event.get("metadata") or {}
        source = str(meta.get("source", ""))
        if source.endswith(f"/instances/{name}") and meta.get("action") in STOP_ACTIONS:
            stopped.set()
            return False
        return not stopped.is_set()

    def watch() -> None:
        try:
            incus.watch_events(on_event, ("lifecycle",), stop=stopped)
        except Exception as exc:  # events are best effort; the poll below still works
            say(f"events stream unavailable: {exc}")

    threading.Thread(target=watch, daemon=True).start()
    while not stopped.is_set():
        try:
            if incus.status(name) == "Stopped":
                return True
        except InstanceNotFound:
            return True
        wait = 2.0
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        stopped.wait(wait)
    return True


def runtime_limit(incus: Incus, name: str) -> tuple[int, bool, bool]:
    """([limits.runtime] max_duration in seconds, auto_stop, stop_graceful), as the session
    launch stored them on the instance (0: no limit)."""
    try:
        config = incus.get_instance(name).config
    except InstanceNotFound:
        return 0, False, False
    try:
        seconds = int(config.get("user.coi.max_duration", "0") or 0)
    except ValueError:
        seconds = 0
    return (
        seconds,
        config.get("user.coi.auto_stop", "true") == "true",
        config.get("user.coi.stop_graceful", "true") == "true",
    )


def enforce_runtime_limit(incus: Incus, name: str, started: float) -> None:
    """Wait for the container to stop; stop it when max_duration runs out first."""
    seconds, auto_stop, graceful = runtime_limit(incus, name)
    if not seconds:
        wait_for_stop(incus, name)
        return
    say(f"[limits] Container will auto-stop after {seconds}s")
    if wait_for_stop(incus, name, started + seconds):
        return
    if not auto_stop:
        say(f"[limits] Runtime limit reached ({seconds}s); auto_stop is off, leaving it running")
        wait_for_stop(incus, name)
        return
    say(f"[limits] Runtime limit reached ({seconds}s): stopping {name}")
    try:
        # Graceful: the agent gets a few seconds to exit, then a forced stop.
        incus.stop(name, timeout=5, force=not graceful)
    except InstanceNotFound:
        return


def patrol_workspace(name: str, prefix: str, stop: threading.Event) -> None:
    """The workspace guard's check every GUARD_PATROL_SECONDS while the session runs; a
    workspace whose walk takes long is checked less often (at most a tenth of our time)."""
    wait = GUARD_PATROL_SECONDS
    while not stop.wait(wait):
        began = time.monotonic()
        try:
            patrol(name, prefix, say)
        except Exception as exc:  # a failed round is said; the next one tries again
            say(f"workspace guard: {exc}")
        wait = max(GUARD_PATROL_SECONDS, 10 * (time.monotonic() - began))


def take_over(lock_fd: int, wait: float = TAKEOVER_SECONDS) -> bool:
    """The supervisor lock of the container's name. Held by another supervisor, it is waited
    for a little: a slot killed (by the monitor, `coi kill`) and started again at once gets its
    new supervisor while the old one may still be finishing the old container's cleanup."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    name = argv[0]
    lock_fd = os.open(locks_dir() / f"supervisor-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    if not take_over(lock_fd):
        return 0  # another supervisor already watches this container
    settings = load_settings()
    # the daemon of the session: SessionManager.supervisor_env names its remote, if any
    remote = os.environ.get("COI_REMOTE") or None
    incus = Incus(settings.socket or None, settings.project, remote=remote)
    manager = SessionManager(incus, settings, say)
    say(f"watching {name}")
    stop_patrol = threading.Event()
    if incus.remote is None:
        threading.Thread(
            target=patrol_workspace,
            args=(name, settings.container_prefix, stop_patrol),
            daemon=True,
        ).start()
    try:
        while True:
            enforce_runtime_limit(incus, name, time.monotonic())
            # Give a stop that is still in progress a moment to settle into Stopped.
            incus.wait_for_status(name, ("Stopped", "Gone"), timeout=30)
            # An attached `coi shell`/`coi attach` finalizes and reports itself; wait for it.
            with file_lock(f"attached-{name}"):
                pass
            result = manager.finalize_if_stopped(name)
            if result != "running":
                break
            # Started again before we got to it (a resumed persistent session, a snapshot
            # restore): its new session needs watching too, and a new supervisor would find
            # this one still holding the lock.
            say(f"{name}: running again, still watching")
        if result == "gone":
            # Deleted behind coi's back (e.g. `incus delete -f`): still release what the hooks
            # hold for it, such as its firewall rules.
            run_hooks("container_ended", manager, name, True)
        say(f"{name}: {result}")
    except CoiError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        stop_patrol.set()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
