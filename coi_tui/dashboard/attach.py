"""When the dashboard's terminal pane may attach to a slot's tmux session, and what to do when an
attach ends. Plain Python (no Textual): the screen's workers call `wait_for_session`, its
handlers call `plan_reconnect`.

- A new slot is listed RUNNING while it still boots: the agent's tmux session only exists once
  the session manager has started it, and `tmux attach` to a missing session ends at once. So
  the pane first waits, polling the backend's `session_state` with a growing interval, until the
  session exists (or the container is gone, or a bounded time has passed).
- An attach that ends is not taken at its word: an early end (within `early_s` of starting) is
  retried after a backoff, at most `max_early_ends` times in a row; any end checks whether the
  container still runs and the session comes back within `return_timeout_s`. Only a container
  that is gone, or a session that stays away, is shown as ended."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class SessionState(StrEnum):
    READY = "ready"  # the container runs and its tmux session exists: attach
    STARTING = "starting"  # the container runs, the session does not exist (yet)
    GONE = "gone"  # the container is not running (stopped, frozen, deleted)


@dataclass(frozen=True)
class AttachPolicy:
    # A new slot: boot wait (systemd), saved state restored, agent started in tmux.
    start_timeout_s: float = 120.0
    # After an attach ended: how long a running container's session may take to come back.
    return_timeout_s: float = 5.0
    poll_first_s: float = 0.1
    poll_max_s: float = 1.0
    poll_growth: float = 1.5
    # An attach that ends within this long of starting ended early: retried, with a backoff.
    early_s: float = 3.0
    max_early_ends: int = 4  # early ends in a row before the pane says the session ended
    backoff_first_s: float = 0.2
    backoff_max_s: float = 2.0

    def backoff(self, early_ends: int) -> float:
        """The pause before retry number `early_ends` (1, 2, ...): doubles up to the cap."""
        return min(self.backoff_max_s, self.backoff_first_s * 2 ** max(0, early_ends - 1))


DEFAULT_POLICY = AttachPolicy()


@dataclass(frozen=True)
class Reconnect:
    """What to do after an attach ended: wait `delay_s`, then wait up to `timeout_s` for the
    session and attach again. `early_ends` is the new count of early ends in a row."""

    delay_s: float
    timeout_s: float
    early_ends: int


def plan_reconnect(lived_s: float, early_ends: int, policy: AttachPolicy) -> Reconnect | None:
    """After an attach that lived `lived_s` ended, with `early_ends` early ends before it in a
    row: how to reconnect, or None when the retries are used up (the session really ended)."""
    if lived_s >= policy.early_s:
        return Reconnect(0.0, policy.return_timeout_s, 0)
    early_ends += 1
    if early_ends > policy.max_early_ends:
        return None
    return Reconnect(policy.backoff(early_ends), policy.return_timeout_s, early_ends)


def pause(seconds: float, cancelled: Callable[[], bool], step_s: float = 0.05) -> bool:
    """Sleep up to `seconds`, waking every `step_s` to check `cancelled`; True if cancelled."""
    deadline = time.monotonic() + seconds
    while not cancelled():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(step_s, left))
    return True


def wait_for_session(
    probe: Callable[[], SessionState],
    timeout_s: float,
    cancelled: Callable[[], bool],
    policy: AttachPolicy = DEFAULT_POLICY,
    on_starting: Callable[[], None] | None = None,
) -> SessionState | None:
    """Probe until the session is READY or the container is GONE; STARTING once `timeout_s`
    has passed without either; None if cancelled meanwhile. `on_starting` is called once,
    the first time the probe says the session does not exist yet (to tell the user)."""
    deadline = time.monotonic() + timeout_s
    interval = policy.poll_first_s
    told = False
    while True:
        if cancelled():
            return None
        state = probe()
        if state is not SessionState.STARTING:
            return state
        if not told and on_starting is not None:
            on_starting()
            told = True
        left = deadline - time.monotonic()
        if left <= 0:
            return SessionState.STARTING
        if pause(min(interval, left), cancelled):
            return None
        interval = min(policy.poll_max_s, interval * policy.poll_growth)


__all__ = [
    "DEFAULT_POLICY",
    "AttachPolicy",
    "Reconnect",
    "SessionState",
    "plan_reconnect",
    "wait_for_session",
]
