"""Container names and slot choice: pure logic, no daemon."""

from __future__ import annotations

import hashlib

import pytest

from coi_tui.core.errors import CoiError
from coi_tui.incus import Instance
from coi_tui.sessions.naming import (
    container_name,
    parse_container_name,
    tmux_session,
    workspace_hash,
)
from coi_tui.sessions.slots import choose_slot


def inst(name: str, status: str = "Running", persistent: bool = False) -> Instance:
    return Instance(
        name=name, status=status, config={"user.coi.persistent": "true" if persistent else "false"}
    )


def test_name_matches_coi_formula() -> None:
    ws = "/home/me/my project"
    expected = hashlib.sha256(ws.encode()).hexdigest()[:8]
    assert workspace_hash(ws) == expected
    assert container_name("coi-", ws, 3) == f"coi-{expected}-3"
    assert parse_container_name("coi-", f"coi-{expected}-3") == (expected, 3)
    assert tmux_session(f"coi-{expected}-3") == f"coi-coi-{expected}-3"


def test_relative_paths_are_made_absolute_without_resolving_symlinks(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert workspace_hash(".") == workspace_hash(str(tmp_path))


@pytest.mark.parametrize(
    "name",
    ["coi-1234567-1", "coi-123456789-1", "other-12345678-1", "coi-12345678", "coi-ABCDEF12-1"],
)
def test_foreign_names_do_not_parse(name: str) -> None:
    assert parse_container_name("coi-", name) is None


def test_lowest_free_slot_and_all_taken() -> None:
    occupied = {1: inst("a-1"), 2: inst("a-2"), 4: inst("a-4")}
    assert choose_slot(occupied, 0, persistent=False) == (3, "")
    full = {n: inst(f"a-{n}") for n in range(1, 11)}
    with pytest.raises(CoiError, match="all 10 slots are in use"):
        choose_slot(full, 0, persistent=False)


def test_occupied_requested_slot_moves_up_with_a_note() -> None:
    slot, note = choose_slot({5: inst("a-5")}, 5, persistent=False)
    assert (slot, note) == (6, "Slot 5 is occupied, using slot 6 instead")


def test_persistent_reuses_lowest_stopped_persistent_container() -> None:
    occupied = {
        1: inst("a-1"),
        2: inst("a-2", "Stopped", persistent=True),
        3: inst("a-3", "Stopped", persistent=True),
    }
    assert choose_slot(occupied, 0, persistent=True) == (2, "")
    assert choose_slot(occupied, 0, persistent=False) == (4, "")
