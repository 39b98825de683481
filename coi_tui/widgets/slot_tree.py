"""Workspaces pane: a tree of workspaces, each with its slots (tool, state, mode, uptime, CPU,
memory). With several Incus hosts (remotes) there is a host level above the workspaces: local
first, then each remote by name; a host that cannot be listed is one "offline: <reason>" row.
Rebuilt only when the shape changes; otherwise labels are updated in place."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from coi_tui.dashboard.backend import SlotInfo, format_bytes, format_uptime

STATE_COMPONENTS = {
    "RUNNING": "slot-tree--running",
    "FROZEN": "slot-tree--frozen",
    "STOPPED": "slot-tree--stopped",
}


def display_path(path: str) -> str:
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home) :]
    return path or "(no workspace)"


@dataclass(frozen=True)
class HostRow:
    """A host's row in the grouped tree: its key ('' = local), label and status text."""

    host: str
    label: str
    detail: str = ""
    offline: bool = False


def slot_matches(slot: SlotInfo, query: str) -> bool:
    if not query:
        return True
    invert = query.startswith("!")
    text = query[1:] if invert else query
    hay = f"{slot.name} {slot.workspace} {slot.tool} {slot.state} {slot.mode} {slot.host}".lower()
    return (text.lower() not in hay) if invert else (text.lower() in hay)


def group_slots(slots: Iterable[SlotInfo], current: str) -> list[tuple[str, list[SlotInfo]]]:
    """Workspaces in display order (the current one first), slots by number."""
    groups: dict[str, list[SlotInfo]] = {}
    for slot in slots:
        groups.setdefault(slot.workspace, []).append(slot)
    order = sorted(groups, key=lambda w: (w != current, w))
    return [(w, sorted(groups[w], key=lambda s: (s.slot, s.name))) for w in order]


class SlotTree(Tree[str]):
    """Node data: the container name for slot rows, '' for workspace rows."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "slot-tree--running",
        "slot-tree--frozen",
        "slot-tree--stopped",
        "slot-tree--other",
        "slot-tree--current",
        "slot-tree--muted",
        "slot-tree--host",
        "slot-tree--offline",
    }
    DEFAULT_CSS = """
    SlotTree > .slot-tree--running { color: $success; }
    SlotTree > .slot-tree--frozen { color: $warning; text-style: bold; }
    SlotTree > .slot-tree--stopped { color: $foreground-muted; }
    SlotTree > .slot-tree--other { color: $error; }
    SlotTree > .slot-tree--current { color: $accent; text-style: bold; }
    SlotTree > .slot-tree--muted { color: $foreground-muted; }
    SlotTree > .slot-tree--host { color: $primary; text-style: bold; }
    SlotTree > .slot-tree--offline { color: $error; }
    """

    class SlotSelected(Message):
        """The highlighted slot changed (name '' when a workspace or host row is
        highlighted)."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, workspace: str = "", *, id: str | None = None) -> None:
        # Before super().__init__: the Tree's reactives call watch_cursor_line at once.
        self.current_workspace = workspace
        self.slots: dict[str, SlotInfo] = {}
        self.filter_text = ""
        self._all_slots: list[SlotInfo] = []
        self._hosts: list[HostRow] | None = None  # None: one daemon, no host level
        self._slot_shape: list[object] = []
        self._slot_nodes: dict[str, TreeNode[str]] = {}
        self._host_nodes: dict[str, TreeNode[str]] = {}
        self._selected_name = ""
        self.pending: dict[str, int] = {}  # slot -> egress requests waiting for approval
        super().__init__("Workspaces", data="", id=id)
        self.show_root = False
        self.guide_depth = 2

    @property
    def selected(self) -> str:
        return self._selected_name

    @property
    def cursor_host(self) -> str:
        """The host of the highlighted row (a slot, a workspace or a host row); '' = local."""
        node = self.cursor_node
        while node is not None:
            if node.data and node.data in self.slots:
                return self.slots[node.data].host
            for host, host_node in self._host_nodes.items():
                if host_node is node:
                    return host
            node = node.parent
        return self._hosts[0].host if self._hosts else ""

    def show_slots(self, slots: list[SlotInfo], hosts: list[HostRow] | None = None) -> None:
        """hosts: the host level (grouped view); None for a single daemon."""
        self._all_slots = list(slots)
        self._hosts = list(hosts) if hosts is not None else None
        self._apply()

    def set_pending(self, counts: dict[str, int]) -> None:
        """The egress approvals badge of each slot (only a change relabels)."""
        if counts != self.pending:
            self.pending = dict(counts)
            self._apply()

    def set_filter(self, query: str) -> None:
        self.filter_text = query
        self._apply()

    def _apply(self) -> None:
        shown = [s for s in self._all_slots if slot_matches(s, self.filter_text)]
        self.slots = {s.name: s for s in shown}
        if self._hosts is None:
            sections: list[tuple[HostRow | None, list[tuple[str, list[SlotInfo]]]]] = [
                (None, group_slots(shown, self.current_workspace))
            ]
        else:
            sections = [
                (
                    row,
                    []
                    if row.offline
                    else group_slots(
                        [s for s in shown if s.host == row.host], self.current_workspace
                    ),
                )
                for row in self._hosts
            ]
        shape: list[object] = [
            (
                None if row is None else (row.host, row.offline),
                [(w, [s.name for s in group]) for w, group in groups],
            )
            for row, groups in sections
        ]
        if shape == self._slot_shape:
            for row, groups in sections:
                if row is not None:
                    self._host_nodes[row.host].set_label(self._host_label(row))
                for _, group in groups:
                    for slot in group:
                        self._slot_nodes[slot.name].set_label(self._slot_label(slot))
        else:
            self._rebuild(sections)
            self._slot_shape = shape
        subtitle = f"{len(shown)} slot{'s' if len(shown) != 1 else ''}"
        offline = sum(1 for row in self._hosts or [] if row.offline)
        if offline:
            subtitle += f" · {offline} host{'s' if offline != 1 else ''} offline"
        self.border_subtitle = subtitle
        self._announce()

    def _rebuild(
        self, sections: list[tuple[HostRow | None, list[tuple[str, list[SlotInfo]]]]]
    ) -> None:
        keep = self._selected_name
        self.clear()
        self._slot_nodes = {}
        self._host_nodes = {}
        for row, groups in sections:
            parent = self.root
            if row is not None:
                label = self._host_label(row)
                if row.offline:
                    self._host_nodes[row.host] = self.root.add_leaf(label, data="")
                    continue
                parent = self.root.add(label, data="", expand=True)
                self._host_nodes[row.host] = parent
            for workspace, group in groups:
                label = Text(display_path(workspace))
                if workspace == self.current_workspace:
                    label.stylize(self._style("slot-tree--current"))
                node = parent.add(label, data="", expand=True)
                for slot in group:
                    self._slot_nodes[slot.name] = node.add_leaf(
                        self._slot_label(slot), data=slot.name
                    )
        target = self._slot_nodes.get(keep)
        if target is None and self._slot_nodes:
            target = next(iter(self._slot_nodes.values()))
        if target is not None:
            _ = self._tree_lines  # lay out the new nodes so they have line numbers
            self.move_cursor(target, animate=False)

    def _host_label(self, row: HostRow) -> Text:
        text = Text(row.label, style=self._style("slot-tree--host"))
        if row.detail:
            component = "slot-tree--offline" if row.offline else "slot-tree--muted"
            text.append(f"  {row.detail}", style=self._style(component))
        return text

    def _style(self, component: str) -> Style:
        return self.get_component_rich_style(component, partial=True)

    def _slot_label(self, slot: SlotInfo) -> Text:
        cpu = "-" if slot.cpu_pct is None else f"{slot.cpu_pct:.0f}%"
        text = Text()
        text.append(f"{slot.slot:>2} ")
        text.append(f"{slot.tool or '-':8} ")
        state_style = self._style(STATE_COMPONENTS.get(slot.state, "slot-tree--other"))
        text.append(f"{slot.state:8}", style=state_style)
        waiting = self.pending.get(slot.name, 0)
        if waiting:  # requests waiting for approval (the Egress tab): before the figures
            text.append(f"?{waiting} ", style=self._style("slot-tree--frozen"))
        muted = self._style("slot-tree--muted")
        text.append(
            f" {slot.mode[:5]:5} {format_uptime(slot.uptime_s):>6} {cpu:>4} "
            f"{format_bytes(slot.mem_bytes):>6}",
            style=muted,
        )
        return text

    def label_text(self, name: str) -> str:
        node = self._slot_nodes.get(name)
        return "" if node is None else str(node.label)

    def rows(self) -> list[str]:
        """Every row's plain text, in display order, indented by depth (tests, debugging)."""
        out: list[str] = []

        def walk(node: TreeNode[str], depth: int) -> None:
            for child in node.children:
                out.append("  " * depth + str(child.label))
                walk(child, depth + 1)

        walk(self.root, 0)
        return out

    def select(self, name: str) -> None:
        node = self._slot_nodes.get(name)
        if node is not None:
            self.move_cursor(node, animate=False)
            self._announce()

    def watch_cursor_line(self, previous_line: int, line: int) -> None:
        super().watch_cursor_line(previous_line, line)
        self._announce()

    def _announce(self) -> None:
        node = self.cursor_node
        name = node.data if node is not None and node.data else ""
        if name not in self.slots:
            name = ""
        if name != self._selected_name:
            self._selected_name = name
            self.post_message(self.SlotSelected(name))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self._all_slots:
            self._slot_shape = []  # rebuild labels with the new theme's colours
            self._apply()
