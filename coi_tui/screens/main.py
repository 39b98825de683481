"""The dashboard's main screen: workspaces+slots, snapshots, the selected slot's terminal and
details, and the threat feed. All I/O runs in thread workers that post messages; handlers
here own every state change.

Slots come from one or more Incus hosts (the local daemon and remotes, see
dashboard/hosts.py). dashboard/poller.py keeps them current: each host is listed in a thread
of its own on its own schedule (a remote that does not answer never delays the local listing),
the local daemon's lifecycle events ask for a listing soon, and the threat feed is polled in a
thread worker here. Every result comes back as a message (screens/messages.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Static,
    TabbedContent,
    TabPane,
    Tree,
)
from textual.worker import Worker, WorkerState, get_current_worker

from coi_tui.core.text import clean_block
from coi_tui.dashboard.attach import (
    DEFAULT_POLICY,
    AttachPolicy,
    SessionState,
    pause,
    plan_reconnect,
    wait_for_session,
)
from coi_tui.dashboard.backend import (
    Backend,
    SlotInfo,
    SnapshotInfo,
    describe,
)
from coi_tui.dashboard.egress import EgressView, answer, pending_counts, read_view
from coi_tui.dashboard.hosts import LOCAL, HostBoard, MultiHostBackend
from coi_tui.dashboard.poller import (
    HostListing,
    LifecycleWatcher,
    SlotPoller,
    ThreatPoller,
    one_line,
)
from coi_tui.dashboard.threats import ThreatEvent, ThreatSource
from coi_tui.screens.confirm import ConfirmScreen
from coi_tui.screens.drill import DrillScreen
from coi_tui.screens.messages import (
    EgressLoaded,
    HostSlotsFailed,
    HostSlotsLoaded,
    OpFinished,
    ProcessesLoaded,
    SnapshotsLoaded,
    TerminalGone,
    TerminalOpened,
    TerminalWaiting,
    ThreatsArrived,
)
from coi_tui.screens.new_slot import NewSlotRequest, NewSlotScreen
from coi_tui.terminal.transport import close_in_background
from coi_tui.widgets.slot_tree import HostRow, SlotTree
from coi_tui.widgets.terminal_view import TerminalView
from coi_tui.widgets.threat_feed import ThreatFeed

# Actions that change something: greyed out with --read-only.
MUTATING = frozenset(
    {
        "toggle_pause",
        "kill",
        "snapshot",
        "restore",
        "branch",
        "new_slot",
        "attach",
        "fire_drill",
        "answer_hold",
    }
)
SLOT_ACTIONS = frozenset({"toggle_pause", "kill", "snapshot", "attach", "focus_terminal"})
SNAPSHOT_ACTIONS = frozenset({"restore", "branch"})
TABS = ("tab-terminal", "tab-info", "tab-processes", "tab-audit", "tab-egress")
EGRESS_POLL_S = 1.0  # the Egress tab and the slots' approval badges
TERMINAL_RETRY_S = 3.0  # a terminal that failed to open is tried again after this long


class HostNewSlotScreen(NewSlotScreen):
    """The new-slot dialog, saying on which host the slot starts."""

    def __init__(self, host_label: str, *args: Any) -> None:
        super().__init__(*args)
        self.host_label = host_label

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(".title", Label).update(f"New slot on {self.host_label}")


class PendingTable(DataTable[Text]):
    """Requests waiting for approval (the Egress tab): y lets one through, n refuses it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "screen.answer_hold(True)", "Approve", tooltip="Allow this name"),
        Binding("n", "screen.answer_hold(False)", "Deny", tooltip="Refuse this name"),
    ]


class MainScreen(Screen[None]):
    ESCAPE_TO_MINIMIZE = False  # Esc belongs to the programs in the terminal pane
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "p",
            "toggle_pause",
            "Pause/Resume",
            id="slot.pause",
            tooltip="Freeze or unfreeze the slot",
        ),
        Binding(
            "k", "kill", "Kill", id="slot.kill", tooltip="Stop and delete the slot (asks first)"
        ),
        Binding(
            "s", "snapshot", "Snapshot", id="slot.snapshot", tooltip="Snapshot the slot's container"
        ),
        Binding(
            "r",
            "restore",
            "Restore",
            id="snapshot.restore",
            tooltip="Roll the slot back to the snapshot (asks first)",
        ),
        Binding(
            "b",
            "branch",
            "Branch",
            id="snapshot.branch",
            tooltip="Start a new slot from the snapshot",
        ),
        Binding("n", "new_slot", "New", id="slot.new", tooltip="Start a new slot"),
        Binding(
            "y",
            "answer_hold(True)",
            "Approve",
            id="egress.approve",
            tooltip="Let the selected slot's waiting request through (Egress tab)",
        ),
        Binding(
            "a",
            "attach",
            "Attach",
            id="slot.attach",
            tooltip="Full-screen tmux attach; detach with ctrl+b d",
        ),
        Binding(
            "t",
            "focus_terminal",
            "Terminal",
            id="slot.terminal",
            tooltip="Type into the slot's terminal (ctrl+] leaves)",
        ),
        Binding(
            "slash",
            "filter",
            "Filter",
            id="filter",
            tooltip="Filter the slots or the threat feed (! inverts)",
        ),
        Binding(
            "f",
            "fire_drill",
            "Fire drill",
            id="health.drill",
            show=False,
            tooltip="Check every threat detector with a throwaway container (coi health --drill)",
        ),
        Binding("ctrl+r", "refresh", "Refresh", id="refresh", show=False),
        Binding("1", "focus_pane(1)", "Workspaces", show=False, id="focus.1"),
        Binding("2", "focus_pane(2)", "Snapshots", show=False, id="focus.2"),
        Binding("3", "focus_pane(3)", "Session", show=False, id="focus.3"),
        Binding("4", "focus_pane(4)", "Threats", show=False, id="focus.4"),
        Binding("left_square_bracket", "cycle_tab(-1)", "Prev tab", show=False, id="tab.prev"),
        Binding("right_square_bracket", "cycle_tab(1)", "Next tab", show=False, id="tab.next"),
        Binding("escape", "close_filter", show=False, id="filter.close"),
    ]

    def __init__(
        self,
        backend: Backend,
        threats: ThreatSource | None,
        workspace: str,
        refresh_interval: float = 2.0,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.backend = MultiHostBackend.wrap(backend)
        self.grouped = self.backend.grouped
        # One daemon: a failed listing keeps the last one on screen. Several: a host that
        # keeps failing collapses to one "offline" row.
        self.board = HostBoard(self.backend.hosts(), offline_after=2 if self.grouped else 1)
        self.workspace = workspace
        self.read_only = read_only
        # Background work, stopped on unmount: listings, lifecycle events, threat polls.
        self.poller = SlotPoller(
            list(self.board.states), self.backend.list_host, self._post_listing, refresh_interval
        )
        self.lifecycle = LifecycleWatcher(
            self.backend.watch_events,
            self.backend.prefix,
            # The events stream is the local daemon's.
            on_change=partial(self.poller.refresh_soon, LOCAL),
        )
        self.threat_poller = ThreatPoller(threats) if threats is not None else None
        self.slots: dict[str, SlotInfo] = {}
        self.selected = ""
        self.snapshots: list[SnapshotInfo] = []
        self.loaded = False  # a host's listing has arrived
        self._terminal_timer: Timer | None = None
        self._opening = ""  # the slot a terminal worker is waiting for or attaching to
        self.attach_policy: AttachPolicy = DEFAULT_POLICY
        self._early_ends: dict[str, int] = {}  # slot -> attaches in a row that ended early
        self._gave_up: set[str] = set()  # sessions that really ended: t reconnects
        self._refocus = ""  # the slot whose pane had the keys when its attach ended
        self._filter_target: Widget | None = None
        self.egress: EgressView | None = None  # the selected slot's, as last read

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Input(placeholder="filter (! inverts, esc clears)", id="filter")
                yield SlotTree(self.workspace, id="workspaces")
                yield DataTable(id="snapshots", cursor_type="row", zebra_stripes=True)
            with TabbedContent(id="main", initial="tab-terminal"):
                with TabPane("Terminal", id="tab-terminal"):
                    # An attach that ends is retried (see _terminal_ended) before the pane
                    # says the session ended.
                    yield TerminalView(id="terminal", end_placeholder="Reconnecting to {name}…")
                with TabPane("Info", id="tab-info"):
                    yield Static(id="info", markup=False)
                with TabPane("Processes", id="tab-processes"), VerticalScroll():
                    yield Static("Select a running slot", id="processes", markup=False)
                with TabPane("Audit", id="tab-audit"), VerticalScroll():
                    yield Static("No threat events", id="audit", markup=False)
                with TabPane("Egress", id="tab-egress"), Vertical():
                    yield PendingTable(id="pending", cursor_type="row")
                    with VerticalScroll():
                        yield Static("Select a slot", id="egress", markup=False)
        yield ThreatFeed(id="threats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#workspaces").border_title = "1 Workspaces"
        self.query_one("#snapshots").border_title = "2 Snapshots"
        self.query_one("#main").border_title = "3 Session"
        self.query_one("#threats").border_title = "4 Threats"
        table = self.query_one("#snapshots", DataTable)
        table.add_columns("Snapshot", "Created")
        pending = self.query_one("#pending", PendingTable)
        pending.add_columns("Waiting for approval", "Port", "Via", "Left")
        pending.display = False
        self.set_interval(EGRESS_POLL_S, self._poll_egress)
        self.query_one("#filter", Input).display = False
        self.query_one(SlotTree).focus()
        self._show_info()
        self.poller.start()
        self.lifecycle.start()
        if self.threat_poller is not None:
            self._watch_threats(self.threat_poller)

    def on_unmount(self) -> None:
        self.poller.stop()
        self.lifecycle.stop()
        if self.threat_poller is not None:
            self.threat_poller.stop()

    # ------------------------------------------------------------------ helpers
    @property
    def slot_tree(self) -> SlotTree:
        return self.query_one(SlotTree)

    @property
    def terminal(self) -> TerminalView:
        return self.query_one(TerminalView)

    @property
    def feed(self) -> ThreatFeed:
        return self.query_one(ThreatFeed)

    @property
    def slot(self) -> SlotInfo | None:
        return self.slots.get(self.selected)

    def selected_snapshot(self) -> SnapshotInfo | None:
        table = self.query_one("#snapshots", DataTable)
        if not self.snapshots or not table.is_valid_row_index(table.cursor_row):
            return None
        row = table.cursor_row
        return self.snapshots[row] if row < len(self.snapshots) else None

    def _focus_area(self) -> str:
        focused = self.focused
        if focused is None:
            return ""
        for node in (focused, *focused.ancestors):
            if node.id in ("workspaces", "snapshots", "main", "threats", "filter"):
                return str(node.id)
        return ""

    # ------------------------------------------------------------------ footer/palette
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        area = self._focus_area()
        if action in SNAPSHOT_ACTIONS:
            if area != "snapshots":
                return False
            if self.read_only or self.slot is None or self.selected_snapshot() is None:
                return None
            return True
        if action in SLOT_ACTIONS:
            if area in ("threats", "filter"):
                return False
            if self.slot is None or (self.read_only and action in MUTATING):
                return None
            if action in ("toggle_pause", "attach", "focus_terminal") and self.slot.state not in (
                "RUNNING",
                "FROZEN",
            ):
                return None
            return True
        if action == "new_slot":
            if area in ("threats", "filter"):
                return False
            return None if self.read_only else True
        if action == "filter":
            return area in ("workspaces", "threats", "")
        if action == "fire_drill":
            return None if self.read_only else True
        if action == "answer_hold":
            if area in ("threats", "filter"):
                return False
            if self.egress is None or not self.egress.pending:
                return False
            return None if self.read_only else True
        return True

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    def palette_actions(self) -> list[tuple[str, str, str]]:
        """(title, help, action) for every dashboard action that can run now."""
        out = []
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            action = binding.action
            name = action.split("(")[0]
            if not binding.description or name in ("close_filter",):
                continue
            if name in MUTATING and self.read_only:
                continue
            if name in SLOT_ACTIONS | SNAPSHOT_ACTIONS and self.slot is None:
                continue
            if name in SNAPSHOT_ACTIONS and not self.snapshots:
                continue
            prefix = "snapshot" if name in SNAPSHOT_ACTIONS else "slot"
            if name.startswith("focus_pane") or name.startswith("cycle_tab"):
                prefix = "go"
            elif name in ("filter", "refresh"):
                prefix = "view"
            elif name == "fire_drill":
                prefix = "health"
            out.append((f"{prefix}: {binding.description}", binding.tooltip or "", action))
        return out

    # ------------------------------------------------------------------ slots
    def action_refresh(self) -> None:
        self.poller.refresh()

    def _post_listing(self, listing: HostListing) -> None:
        """From a listing thread: the result goes to the handlers below as a message."""
        if listing.ok:
            self.post_message(HostSlotsLoaded(listing.host, listing.slots))
        else:
            self.post_message(HostSlotsFailed(listing.host, listing.error))

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(
                f"{type(error).__name__}: {error}", title="Unexpected error", severity="error"
            )

    def host_label(self, host: str) -> str:
        state = self.board.states.get(host)
        return state.host.label if state is not None else host or "local"

    @on(HostSlotsLoaded)
    def _host_loaded(self, message: HostSlotsLoaded) -> None:
        self.loaded = True
        if self.board.loaded(message.host, message.slots) == "online":
            if self.grouped:
                self.notify(f"{self.host_label(message.host)} answers again.", title="Incus")
            else:
                self.notify("Listing containers works again.", title="Incus")
        self._show_slots()

    @on(HostSlotsFailed)
    def _host_failed(self, message: HostSlotsFailed) -> None:
        change = self.board.failed(message.host, message.error)
        if not self.grouped:
            # One daemon: the last listing stays on screen, the failure is said once.
            self.slot_tree.border_subtitle = "cannot list containers"
            if change is not None:
                self.notify(message.error, title="Cannot list containers", severity="error")
            return
        if change is not None:
            self.notify(
                message.error,
                title=f"{self.host_label(message.host)} is offline",
                severity="warning",
            )
        self._show_slots()

    def host_rows(self) -> list[HostRow] | None:
        if not self.grouped:
            return None
        return [
            HostRow(h, state.host.label, state.detail, state.status == "offline")
            for h, state in self.board.states.items()
        ]

    def _show_slots(self) -> None:
        slots = self.board.visible_slots(hide_offline=self.grouped)
        self.slots = {s.name: s for s in slots}
        self._gave_up &= set(self.slots)
        self._early_ends = {k: v for k, v in self._early_ends.items() if k in self.slots}
        self.slot_tree.show_slots(slots, self.host_rows())
        if self.slot_tree.selected != self.selected:
            self._select(self.slot_tree.selected)
        self._show_info()
        self._sync_terminal()
        self.refresh_bindings()
        if not slots:
            self.terminal.disconnect("No coi sessions yet - press n to start one")

    @on(SlotTree.SlotSelected)
    def _slot_selected(self, message: SlotTree.SlotSelected) -> None:
        if message.name != self.selected:
            self._select(message.name)

    def _select(self, name: str) -> None:
        self.selected = name
        # The session panel names the container it shows (the pane's tmux status truncates it).
        self.query_one("#main").border_title = f"3 Session · {name}" if name else "3 Session"
        self.snapshots = []
        self._show_snapshots()
        self._show_info()
        self._show_audit()
        self.egress = None
        self._show_egress()
        if name:
            self._load_egress(name, list(self.slots))
            self._load_snapshots(name)
            if self.query_one(TabbedContent).active == "tab-processes":
                self._load_processes(name)
        # Moving the cursor quickly must not start an exec per row.
        if self._terminal_timer is not None:
            self._terminal_timer.stop()
        self._terminal_timer = self.set_timer(0.2, self._sync_terminal)
        self.refresh_bindings()

    @on(Tree.NodeSelected)
    def _node_selected(self, event: Tree.NodeSelected[str]) -> None:
        if event.node.data:  # Enter on a slot row: type into it
            self.action_focus_terminal()

    # ------------------------------------------------------------------ details
    def _show_info(self) -> None:
        slot = self.slot
        info = self.query_one("#info", Static)
        if slot is None:
            info.update("Select a slot")
            return
        rows = describe(slot)
        width = max(len(k) for k, _ in rows)
        info.update("\n".join(f"{k:<{width}}  {v}" for k, v in rows))

    def _show_snapshots(self) -> None:
        table = self.query_one("#snapshots", DataTable)
        table.clear()
        for snap in self.snapshots:
            table.add_row(Text(snap.name), Text(snap.created_at[:19].replace("T", " ")))
        table.border_subtitle = f"{len(self.snapshots)}" if self.selected else ""

    @work(thread=True, exclusive=True, exit_on_error=False, group="snapshots")
    def _load_snapshots(self, name: str) -> None:
        try:
            snaps = self.backend.list_snapshots(name)
        except Exception:
            snaps = []  # gone meanwhile: the next listing removes the slot
        if not get_current_worker().is_cancelled:
            self.post_message(SnapshotsLoaded(name, snaps))

    @on(SnapshotsLoaded)
    def _snapshots_loaded(self, message: SnapshotsLoaded) -> None:
        if message.name != self.selected:
            return
        self.snapshots = message.snapshots
        self._show_snapshots()
        self.refresh_bindings()

    @work(thread=True, exclusive=True, exit_on_error=False, group="processes")
    def _load_processes(self, name: str) -> None:
        try:
            text = self.backend.processes(name)
        except Exception as exc:
            text = f"Cannot list processes: {one_line(exc)}"
        if not get_current_worker().is_cancelled:
            self.post_message(ProcessesLoaded(name, text))

    @on(ProcessesLoaded)
    def _processes_loaded(self, message: ProcessesLoaded) -> None:
        if message.name == self.selected:
            # `ps` runs in the container, which may replace it: plain text, escapes visible
            self.query_one("#processes", Static).update(clean_block(message.text))

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "tab-processes" and self.slot is not None:
            self.query_one("#processes", Static).update("Loading…")
            self._load_processes(self.selected)

    def _show_audit(self) -> None:
        audit = self.query_one("#audit", Static)
        if not self.selected:
            audit.update("Select a slot")
            return
        events = [e for e in self.feed.events if e.container == self.selected]
        if not events:
            audit.update(f"No threat events for {self.selected}")
            return
        lines = [
            f"{e.timestamp[:19]}  {e.level.upper():8} {e.category:12} {e.title}"
            + (f"\n    {e.description}" if e.description else "")
            + (f"\n    action: {e.action}" if e.action else "")
            for e in events[-200:]
        ]
        audit.update("\n".join(lines))

    # ------------------------------------------------------------------ egress
    def _poll_egress(self) -> None:
        if self.slots:
            self._load_egress(self.selected, list(self.slots))

    @work(thread=True, exclusive=True, exit_on_error=False, group="egress")
    def _load_egress(self, name: str, names: list[str]) -> None:
        view = read_view(name) if name else None
        counts = pending_counts(names)
        if not get_current_worker().is_cancelled:
            self.post_message(EgressLoaded(name, view, counts))

    @on(EgressLoaded)
    def _egress_loaded(self, message: EgressLoaded) -> None:
        self.slot_tree.set_pending(message.counts)
        if message.name != self.selected:
            return
        before = [p.hold_id for p in self.egress.pending] if self.egress else []
        after = [p.hold_id for p in message.view.pending] if message.view else []
        self.egress = message.view
        self._show_egress()
        if before != after:
            self.refresh_bindings()

    def _show_egress(self) -> None:
        view = self.egress
        table = self.query_one("#pending", PendingTable)
        text = self.query_one("#egress", Static)
        if view is None or not self.selected:
            table.display = False
            text.update("Select a slot")
            return
        if not view.proxied:
            table.display = False
            text.update(
                f"No egress log for {self.selected}: its web traffic is not proxied "
                '([network] egress = "proxy")'
            )
            return
        now = time.time()
        keep = self._hold_under_cursor()
        table.clear()
        for hold in view.pending:
            table.add_row(
                Text(hold.domain),
                Text(str(hold.port)),
                Text(hold.protocol),
                Text(f"{hold.left(now)} s"),
                key=hold.hold_id,
            )
        table.display = bool(view.pending)
        ids = [p.hold_id for p in view.pending]
        if keep in ids:  # the cursor stays on its request, wherever the list moved it
            table.move_cursor(row=ids.index(keep))
        lines = []
        if view.pending:
            lines.append("y approves, n (in the list) denies; both last for the session")
            lines.append("")
        if view.totals:
            lines.append(f"{'DOMAIN':<40} {'OK':>5} {'NO':>5} {'OUT':>10} {'IN':>10}")
            lines += [f"{d:<40} {a:>5} {n:>5} {o:>10} {i:>10}" for d, a, n, o, i in view.totals]
            lines.append("")
        lines += view.lines or ["No egress records yet"]
        text.update("\n".join(lines))

    def _hold_under_cursor(self) -> str:
        table = self.query_one("#pending", PendingTable)
        if not table.row_count:
            return ""
        row = min(max(table.cursor_row, 0), table.row_count - 1)
        return str(table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value or "")

    def action_answer_hold(self, approve: bool) -> None:
        view = self.egress
        if view is None or not view.pending:
            self.notify("No request is waiting for approval", severity="warning")
            return
        # the request the operator sees under the cursor, by its id (never a row number)
        wanted = self._hold_under_cursor()
        hold = next((p for p in view.pending if p.hold_id == wanted), None)
        if hold is None:
            self.notify("That request is no longer waiting", severity="warning")
            return
        op = "approve" if approve else "deny"
        self._run_op(op, hold.container, lambda: answer(hold, approve))

    # ------------------------------------------------------------------ threats
    @work(thread=True, exit_on_error=False, group="threats")
    def _watch_threats(self, poller: ThreatPoller) -> None:
        """Polls the threat source for as long as the screen lives."""
        worker = get_current_worker()

        def deliver(events: list[ThreatEvent]) -> None:
            self.post_message(ThreatsArrived(events))

        poller.run(deliver, cancelled=lambda: worker.is_cancelled)

    @on(ThreatsArrived)
    def _threats_arrived(self, message: ThreatsArrived) -> None:
        self.feed.add_events(message.events)
        if any(e.container == self.selected for e in message.events):
            self._show_audit()

    # ------------------------------------------------------------------ terminal
    def _sync_terminal(self) -> None:
        """Connect the terminal pane to the selected slot's tmux session when it runs."""
        self._terminal_timer = None
        terminal = self.terminal
        slot = self.slot
        if slot is None:
            if terminal.connected or not self.selected:
                terminal.disconnect("Select a slot" if self.slots else None)
            return
        if slot.state not in ("RUNNING", "FROZEN"):
            self._gave_up.discard(slot.name)  # once it runs again, attach again
            terminal.disconnect(f"{slot.name} is {slot.state}")
            return
        if terminal.session_name == slot.name or self._opening == slot.name:
            return
        if slot.state == "FROZEN":
            self._gave_up.discard(slot.name)
            terminal.disconnect(f"{slot.name} is FROZEN - p resumes it")
            return
        if slot.name in self._gave_up:
            # Its session ended for good: no attach loop against a missing session.
            terminal.disconnect(self._ended_text(slot.name, running=True))
            return
        if time.monotonic() - terminal.ended_at.get(slot.name, 0.0) < TERMINAL_RETRY_S:
            return
        terminal.disconnect(f"Connecting to {slot.name}…")
        self._opening = slot.name
        self._early_ends.pop(slot.name, None)
        size = terminal.content_size
        self._open_terminal(
            slot.name, size.width or 80, size.height or 24, self.attach_policy.start_timeout_s
        )

    @staticmethod
    def _ended_text(name: str, running: bool) -> str:
        return f"Session {name} ended" + (" - t reconnects" if running else "")

    @work(thread=True, exclusive=True, exit_on_error=False, group="terminal")
    def _open_terminal(
        self, name: str, columns: int, lines: int, timeout_s: float, delay_s: float = 0.0
    ) -> None:
        """Wait (up to timeout_s) until the slot's tmux session exists, then attach. A new
        slot is listed RUNNING while it boots, before the session manager has started the
        agent's session, and an attach to a missing session ends at once."""
        worker = get_current_worker()

        def cancelled() -> bool:
            return worker.is_cancelled

        def waiting() -> None:
            self.post_message(TerminalWaiting(name))

        try:
            if delay_s > 0 and pause(delay_s, cancelled):
                return
            state = wait_for_session(
                partial(self.backend.session_state, name),
                timeout_s,
                cancelled,
                self.attach_policy,
                on_starting=waiting,
            )
            if state is None:
                return  # another slot was selected meanwhile, or the app quits
            if state is not SessionState.READY:
                self.post_message(TerminalGone(name, running=state is SessionState.STARTING))
                return
            transport = self.backend.open_terminal(name, columns, lines, self.read_only)
        except Exception as exc:
            self.post_message(OpFinished("terminal", name, error=one_line(exc)))
            return
        if cancelled():
            transport.close()
            return
        self.post_message(TerminalOpened(name, transport))

    @on(TerminalWaiting)
    def _terminal_waiting(self, message: TerminalWaiting) -> None:
        if self._opening == message.name and self.selected == message.name:
            self.terminal.disconnect(f"Waiting for the agent's session in {message.name}…")

    @on(TerminalGone)
    def _terminal_gone(self, message: TerminalGone) -> None:
        if self._opening != message.name:
            return  # a worker that another selection replaced
        self._opening = ""
        self._refocus = ""
        self._early_ends.pop(message.name, None)
        if message.running:
            self._gave_up.add(message.name)
        self.terminal.ended_at[message.name] = time.monotonic()
        if self.selected == message.name and not self.terminal.connected:
            self.terminal.disconnect(self._ended_text(message.name, message.running))
        self.poller.refresh_soon()

    @on(TerminalOpened)
    def _terminal_opened(self, message: TerminalOpened) -> None:
        if self._opening == message.name:
            self._opening = ""
        slot = self.slot
        if slot is None or slot.name != message.name or slot.state != "RUNNING":
            close_in_background(message.transport)  # it may take a while: never on this thread
            return
        self.terminal.connect(message.transport, message.name)
        # It had the keys before the attach dropped. The tree's focus from then may still be
        # queued (focus() is deferred), so the terminal's is queued after it; a pane the user
        # chose meanwhile keeps the keys.
        if self._refocus == message.name and self.focused in (self.slot_tree, self.terminal):
            self.terminal.focus()
        self._refocus = ""

    @on(TerminalView.Ended)
    def _terminal_ended(self, message: TerminalView.Ended) -> None:
        """An attach ended: retry it while the container runs and its session exists or comes
        back (an early end after a backoff, at most a few in a row); else say it ended."""
        name = message.name
        had_keys = self.focused is self.terminal
        if had_keys:
            self.slot_tree.focus()  # keys typed meanwhile must not reach a dead pane
        self.poller.refresh_soon()
        slot = self.slot
        if not name or slot is None or slot.name != name or slot.state != "RUNNING":
            self.terminal.disconnect(self._ended_text(name, running=False) if name else None)
            return
        plan = plan_reconnect(message.lived_s, self._early_ends.get(name, 0), self.attach_policy)
        if plan is None:
            self._early_ends.pop(name, None)
            self._gave_up.add(name)
            self.terminal.disconnect(self._ended_text(name, running=True))
            return
        self._early_ends[name] = plan.early_ends
        self._opening = name
        self._refocus = name if had_keys else ""
        self.terminal.disconnect(f"Reconnecting to {name}…")
        size = self.terminal.content_size
        self._open_terminal(name, size.width or 80, size.height or 24, plan.timeout_s, plan.delay_s)

    @on(TerminalView.Left)
    def _terminal_left(self) -> None:
        self.slot_tree.focus()

    def action_focus_terminal(self) -> None:
        self.query_one(TabbedContent).active = "tab-terminal"
        self.terminal.focus()
        slot = self.slot
        if (
            slot is not None
            and slot.state == "RUNNING"
            and not self.terminal.connected
            and self._opening != slot.name
        ):
            # A session that ended (or failed to open): t tries again now.
            self._gave_up.discard(slot.name)
            self.terminal.ended_at.pop(slot.name, None)
            self._sync_terminal()

    # ------------------------------------------------------------------ navigation
    def action_focus_pane(self, number: int) -> None:
        if number == 1:
            self.slot_tree.focus()
        elif number == 2:
            self.query_one("#snapshots", DataTable).focus()
        elif number == 3:
            tabs = self.query_one(TabbedContent)
            if tabs.active == "tab-terminal":
                self.terminal.focus()
            else:
                tabs.query_one("Tabs").focus()
        elif number == 4:
            self.feed.focus()

    def action_cycle_tab(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        index = TABS.index(tabs.active) if tabs.active in TABS else 0
        tabs.active = TABS[(index + step) % len(TABS)]

    def action_filter(self) -> None:
        target: Widget = self.feed if self._focus_area() == "threats" else self.slot_tree
        self._filter_target = target
        box = self.query_one("#filter", Input)
        box.value = (
            target.query_text if isinstance(target, ThreatFeed) else self.slot_tree.filter_text
        )
        box.placeholder = (
            "filter threats (! inverts)" if target is self.feed else "filter slots (! inverts)"
        )
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        target = self._filter_target
        if isinstance(target, ThreatFeed | SlotTree):
            target.set_filter(event.value.strip())

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self._hide_filter()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus:
            box.value = ""  # esc clears, then goes back
            self._hide_filter()

    def _hide_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = False
        (self._filter_target or self.slot_tree).focus()

    # ------------------------------------------------------------------ operations
    @work(thread=True, exit_on_error=False, group="ops")
    def _run_op(self, op: str, name: str, fn: Callable[[], str | None]) -> None:
        try:
            result = fn()
        except Exception as exc:  # a failed operation is a notification, never a crash
            self.post_message(OpFinished(op, name, error=one_line(exc)))
        else:
            self.post_message(OpFinished(op, name, result=result or ""))

    @on(OpFinished)
    def _op_finished(self, message: OpFinished) -> None:
        if message.op == "terminal":
            if self._opening != message.name:
                return  # a worker that another selection replaced
            self._opening = ""
            self._refocus = ""
            self.terminal.ended_at[message.name] = time.monotonic()
            self.terminal.disconnect(f"Cannot open the terminal: {message.error}")
            return
        # Restored, branched, started: its terminal may attach again.
        self._gave_up.discard(message.name)
        self._gave_up.discard(message.result)
        if not message.ok:
            self.notify(
                message.error, title=f"{message.op} failed: {message.name}", severity="error"
            )
        else:
            done = {
                "pause": f"{message.name} is frozen",
                "resume": f"{message.name} is running again",
                "kill": f"{message.name} was killed",
                "snapshot": f"snapshot {message.result} of {message.name} created",
                "restore": f"{message.name} restored",
                "branch": f"{message.result} started from {message.name}",
                "new": f"{message.result} started",
                "approve": message.result,
                "deny": message.result,
            }.get(message.op, f"{message.op} done")
            self.notify(done, title=message.op.capitalize())
        if message.name == self.selected:
            self._load_snapshots(message.name)
        self.poller.refresh()

    def action_toggle_pause(self) -> None:
        slot = self.slot
        if slot is None:
            return
        if slot.state == "FROZEN":
            self._run_op("resume", slot.name, lambda: self.backend.resume(slot.name))
        else:
            self._run_op("pause", slot.name, lambda: self.backend.pause(slot.name))

    def action_kill(self) -> None:
        slot = self.slot
        if slot is None:
            return
        body = (
            f"Kill {slot.name} ({slot.tool or 'agent'} in {slot.workspace or '?'})?\n"
            "The container is stopped at once and deleted; the agent's session data is saved "
            "first."
        )

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                if self.terminal.session_name == slot.name:
                    self.terminal.disconnect(f"Killing {slot.name}…")
                self._run_op("kill", slot.name, lambda: self.backend.kill(slot.name))

        self.app.push_screen(ConfirmScreen(f"Kill {slot.name}", body, "Kill"), answered)

    def action_snapshot(self) -> None:
        slot = self.slot
        if slot is not None:
            self._run_op("snapshot", slot.name, lambda: self.backend.snapshot(slot.name))

    def action_restore(self) -> None:
        slot, snap = self.slot, self.selected_snapshot()
        if slot is None or snap is None:
            return
        body = (
            f"Roll {slot.name} back to snapshot {snap.name}?\n"
            "A running container is stopped, restored and restarted; everything in it since "
            "the snapshot is lost (the workspace folder is not part of snapshots)."
        )

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                if self.terminal.session_name == slot.name:
                    self.terminal.disconnect(f"Restoring {slot.name}…")
                self._run_op(
                    "restore", slot.name, lambda: self.backend.restore(slot.name, snap.name)
                )

        self.app.push_screen(ConfirmScreen(f"Restore {slot.name}", body, "Restore"), answered)

    def action_branch(self) -> None:
        slot, snap = self.slot, self.selected_snapshot()
        if slot is not None and snap is not None:
            self._run_op("branch", slot.name, lambda: self.backend.branch(slot.name, snap.name))

    def action_fire_drill(self) -> None:
        self.app.push_screen(DrillScreen())

    def action_new_slot(self) -> None:
        workspace = self.slot.workspace if self.slot and self.slot.workspace else self.workspace
        tool = self.slot.tool if self.slot else "claude"
        # Several hosts: the slot starts on the host of the highlighted row.
        host = self.slot_tree.cursor_host if self.grouped else LOCAL

        def answered(request: NewSlotRequest | None) -> None:
            if request is not None:
                self._run_op(
                    "new",
                    request.workspace,
                    lambda: self.backend.new_slot(
                        request.workspace, request.tool, request.profile, host=host
                    ),
                )

        args = (workspace, self.backend.tools(), self.backend.profiles(), tool)
        dialog = HostNewSlotScreen(self.host_label(host), *args) if self.grouped else None
        self.app.push_screen(dialog or NewSlotScreen(*args), answered)

    def action_attach(self) -> None:
        slot = self.slot
        if slot is None:
            return
        try:
            with self.app.suspend():
                self.backend.attach(slot.name)
        except SuspendNotSupported:
            self.notify("Attach needs a real terminal.", severity="warning")
        except Exception as exc:
            self.notify(one_line(exc), title=f"attach failed: {slot.name}", severity="error")
        self.poller.refresh()
