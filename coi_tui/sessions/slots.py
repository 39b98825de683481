"""Slot allocation, serialised per workspace so parallel launches never pick the same slot."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import file_lock
from coi_tui.incus import Instance
from coi_tui.sessions.naming import MAX_SLOTS, parse_container_name


def slot_lock(workspace_hash: str, say: Callable[[str], None]) -> AbstractContextManager[None]:
    def waiting() -> None:
        say("Waiting for another coi launch of this workspace to pick its slot...")

    return file_lock(f"slots-{workspace_hash}", waiting)


def occupied_slots(instances: list[Instance], prefix: str, ws_hash: str) -> dict[int, Instance]:
    slots: dict[int, Instance] = {}
    for instance in instances:
        parsed = parse_container_name(prefix, instance.name)
        if parsed and parsed[0] == ws_hash:
            slots[parsed[1]] = instance
    return slots


def choose_slot(occupied: dict[int, Instance], requested: int, persistent: bool) -> tuple[int, str]:
    """Pick a slot: (slot, note). `requested` 0 means the lowest free one."""
    if persistent and requested == 0:
        # Reuse the lowest stopped persistent container of this workspace first.
        for slot in sorted(occupied):
            inst = occupied[slot]
            if inst.status == "Stopped" and inst.config.get("user.coi.persistent") == "true":
                return slot, ""
    if requested:
        current = occupied.get(requested)
        if current is None or _reusable(current, persistent):
            return requested, ""
        for slot in range(requested + 1, MAX_SLOTS + 1):
            if slot not in occupied:
                return slot, f"Slot {requested} is occupied, using slot {slot} instead"
        raise CoiError(
            f"slot {requested} is occupied and no higher slot is free "
            "(see 'coi list'; free one with 'coi kill')"
        )
    for slot in range(1, MAX_SLOTS + 1):
        if slot not in occupied:
            return slot, ""
    raise CoiError(
        f"all {MAX_SLOTS} slots are in use for this workspace: "
        "free one with 'coi kill <name>' or 'coi clean'"
    )


def _reusable(instance: Instance, persistent: bool) -> bool:
    """A stopped container in the requested slot can be reused (persistent) or replaced."""
    return instance.status == "Stopped"
