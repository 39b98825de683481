"""What keeps the dashboard's view current, without any UI: per-host slot listings on their own
schedules, the local daemon's lifecycle events that ask for a listing soon, and the threat feed's
polls. Results go out through callbacks (the screen turns them into messages).

Threads and who owns them:
- `SlotPoller` owns one scheduler thread and, per host, at most one listing thread at a time.
  Listings run in daemon threads of their own, not in a pool: a few remotes that hang until
  their timeout must never queue the local listing behind them, and quitting must never wait
  for them. `stop()` ends the scheduler at once; a listing still in flight ends on its own and
  reports nothing.
- `LifecycleWatcher` owns one daemon thread that follows the event stream; `stop()` ends it.
- `ThreatPoller` owns no thread: its `run()` loops in the caller's thread until `stop()` or the
  caller's `cancelled()` says so.
Work that ends after `stop()` reports nothing."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from coi_tui.dashboard.backend import EventCallback, SlotInfo, is_lifecycle_for
from coi_tui.dashboard.threats import ThreatEvent, ThreatSource

BURST_S = 0.15  # lifecycle events come in bursts (stop, delete...): one listing per burst
EVENTS_RETRY_S = 2.0  # an event stream that ended (daemon restart) is opened again after this
THREAT_POLL_S = 0.2


def one_line(exc: BaseException) -> str:
    """An exception as the one line the dashboard shows."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class HostListing:
    """One host's listing: its slots, or the one-line error it failed with."""

    host: str
    slots: list[SlotInfo] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class SlotPoller:
    """Lists every host now and then again `interval` seconds after its last listing ended.

    A host is never listed twice at once: asking for a host whose listing still runs queues
    exactly one more listing, started when the running one ends. `report` is called from the
    listing's thread with each HostListing, in order per host."""

    def __init__(
        self,
        hosts: Sequence[str],
        list_host: Callable[[str], list[SlotInfo]],
        report: Callable[[HostListing], None],
        interval: float,
        burst_s: float = BURST_S,
    ) -> None:
        self.hosts = list(hosts)
        self.interval = interval
        self.burst_s = burst_s
        self._list_host = list_host
        self._report = report
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # host -> when (time.monotonic) to list it next
        self._listing: set[str] = set()  # hosts whose listing thread runs
        self._queued: set[str] = set()  # hosts to list again as soon as their listing ends
        self._threads: list[threading.Thread] = []  # the scheduler's and every listing's
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """List every host now and keep listing them until stop()."""
        with self._cond:
            if self._started or self._stopped:
                return
            self._started = True
            self._spawn(self._schedule, "coi-list-scheduler")
        self.refresh()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._queued.clear()
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """After stop(): wait until the scheduler and every listing thread have ended (a
        listing ends when its host answers or times out); False if some still run."""
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def refresh(self, hosts: Iterable[str] | None = None) -> None:
        """List these hosts (None: all) now; one still being listed is listed again after."""
        with self._cond:
            if self._stopped:
                return
            for host in self.hosts if hosts is None else hosts:
                if host in self.hosts:
                    self._due.pop(host, None)
                    self._start_locked(host)

    def refresh_soon(self, host: str | None = None) -> None:
        """List this host (None: all) within burst_s: every request in that window is served by
        the same listing."""
        with self._cond:
            if self._stopped:
                return
            when = time.monotonic() + self.burst_s
            for name in self.hosts if host is None else [host]:
                if name in self.hosts:
                    self._due[name] = min(self._due.get(name, when), when)
            self._cond.notify_all()

    # ------------------------------------------------------------------ what it is doing
    @property
    def listing(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._listing)

    @property
    def queued(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._queued)

    def due_in(self, host: str) -> float | None:
        """Seconds until this host's next listing is due (None: none armed)."""
        with self._cond:
            when = self._due.get(host)
        return None if when is None else when - time.monotonic()

    # ------------------------------------------------------------------ threads
    def _start_locked(self, host: str) -> None:
        if host in self._listing:
            self._queued.add(host)
            return
        self._listing.add(host)
        self._spawn(partial(self._list, host), f"coi-list-{host}")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _schedule(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for host in [h for h, when in self._due.items() if when <= now]:
                    del self._due[host]
                    self._start_locked(host)
                wait = min(self._due.values()) - now if self._due else None
                self._cond.wait(wait)

    def _list(self, host: str) -> None:
        try:
            listing = HostListing(host, slots=self._list_host(host))
        except Exception as exc:  # the daemon is down, a bug...: reported, never fatal
            listing = HostListing(host, error=one_line(exc))
        if self._stopped:
            return
        # Before the bookkeeping: a host's next listing starts only after this one's report.
        self._report(listing)
        with self._cond:
            self._listing.discard(host)
            if self._stopped:
                return
            if host in self._queued:
                self._queued.discard(host)
                self._start_locked(host)
                return
            when = time.monotonic() + self.interval
            self._due[host] = min(self._due.get(host, when), when)
            self._cond.notify_all()


class LifecycleWatcher:
    """Follows a daemon's event stream in a thread of its own and calls `on_change` for every
    lifecycle event of one of our containers (names starting with `prefix`). A stream that ends
    (the daemon restarted) is opened again after `retry_s`; the poll keeps the view right
    meanwhile."""

    def __init__(
        self,
        watch_events: Callable[[EventCallback, threading.Event], None],
        prefix: str,
        on_change: Callable[[], None],
        retry_s: float = EVENTS_RETRY_S,
    ) -> None:
        self._watch_events = watch_events
        self.prefix = prefix
        self._on_change = on_change
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="incus-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ends the stream (at its next event or check of the stop flag); never blocks."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """After stop(): wait for the thread to end; False if it still runs."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _on_event(self, event: dict[str, Any]) -> None:
        if not self._stop.is_set() and is_lifecycle_for(event, self.prefix):
            self._on_change()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a broken stream is opened again
                self._watch_events(self._on_event, self._stop)
            self._stop.wait(self.retry_s)


class ThreatPoller:
    """Reads a ThreatSource every `interval` seconds; a source that fails reads as empty (the
    feed must never bring the dashboard down) and is counted."""

    def __init__(self, source: ThreatSource, interval: float = THREAT_POLL_S) -> None:
        self.source = source
        self.interval = interval
        self.failures = 0
        self._stop = threading.Event()

    def poll(self) -> list[ThreatEvent]:
        try:
            return self.source.read_new()
        except Exception:
            self.failures += 1
            return []

    def run(
        self,
        deliver: Callable[[list[ThreatEvent]], None],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        """Poll until stop() or cancelled(); every non-empty batch goes to `deliver`."""
        while not self._stop.is_set() and not cancelled():
            events = self.poll()
            if events and not self._stop.is_set():
                deliver(events)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
