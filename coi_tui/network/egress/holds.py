"""Holds: with `[network] egress_hold_sec` above 0, a connection or DNS query for a name that an
allowlist does not list (not one a pattern denies) waits that long for the operator, who
approves or denies it (`coi egress allow|deny`, the dashboard's Egress tab). The wait is
announced by a "pending" record in the container's egress log; the request's own record
carries the same `hold_id` once it is decided. Queries for one name share one hold (a DNS
client asks again while it waits)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from coi_tui.network.egress.policy import NOT_LISTED, Decision, EgressPolicy

POLL_SEC = 0.1
MAX_HOLDS = 16  # open holds of one container: beyond, a request is refused at once


class Holds:
    def __init__(
        self,
        policy_of: Callable[[str], EgressPolicy | None],
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        self.policy_of = policy_of  # re-read from its file while a request waits
        self.record = record
        self.waiting: dict[tuple[str, str], asyncio.Task[tuple[EgressPolicy | None, str]]] = {}

    @staticmethod
    def applies(policy: EgressPolicy, decision: Decision) -> bool:
        return not decision.allowed and decision.reason == NOT_LISTED and policy.hold_sec > 0

    def full(self, container: str, name: str) -> bool:
        """A container that asks for many unlisted names gets no more waiting rooms."""
        if (container, name) in self.waiting:
            return False
        return sum(1 for c, _ in self.waiting if c == container) >= MAX_HOLDS

    async def wait(
        self, container: str, name: str, port: int, hold_sec: float, kind: str
    ) -> tuple[EgressPolicy | None, str]:
        """The container's policy once it names `name` (None: not in time, or the container
        is gone), and the hold's id."""
        key = (container, name)
        if self.full(container, name):
            return None, ""
        task = self.waiting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self.hold(container, name, port, hold_sec, kind)
            )
            self.waiting[key] = task
            task.add_done_callback(lambda _done: self.waiting.pop(key, None))
        return await asyncio.shield(task)

    async def hold(
        self, container: str, name: str, port: int, hold_sec: float, kind: str
    ) -> tuple[EgressPolicy | None, str]:
        hold_id = secrets.token_hex(6)
        self.record(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "container": container,
                "type": "pending",
                "hold_id": hold_id,
                "domain": name,
                "port": port,
                "protocol": kind,
                "until": round(time.time() + hold_sec, 1),
            }
        )
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + hold_sec
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SEC)
            policy = await loop.run_in_executor(None, self.policy_of, container)
            if policy is None:
                return None, hold_id
            if policy.resolvable(name).reason != NOT_LISTED:
                return policy, hold_id  # approved or denied
        return None, hold_id


def not_approved(hold_sec: float, hold_id: str) -> Decision:
    if not hold_id:
        return Decision(False, f"{MAX_HOLDS} other requests already wait for approval")
    return Decision(False, f"not approved within {hold_sec:g} s")
