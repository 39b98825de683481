"""dashboard/poller.py without any UI: per-host listings on their own schedules, lifecycle
events, threat polls, and what stop() ends. Every wait is on a condition."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coi_tui.dashboard.backend import SlotInfo
from coi_tui.dashboard.poller import (
    HostListing,
    LifecycleWatcher,
    SlotPoller,
    ThreatPoller,
    one_line,
)
from coi_tui.dashboard.threats import PushSource, ThreatEvent


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.005)


def slot(name: str) -> SlotInfo:
    return SlotInfo(name=name, workspace="/w", slot=1, tool="dummy", state="RUNNING")


class Hosts:
    """list_host for a few hosts: counts calls, blocks a host on its gate, fails on demand."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.calls: Counter[str] = Counter()
        self.gates: dict[str, threading.Event] = {}
        self.fail: dict[str, Exception] = {}
        self.reports: list[HostListing] = []
        self._lock = threading.Lock()

    def list_host(self, host: str) -> list[SlotInfo]:
        with self._lock:
            self.calls[host] += 1
        gate = self.gates.get(host)
        if gate is not None:
            gate.wait(10)
        if host in self.fail:
            raise self.fail[host]
        return [slot(f"{host}-1")]

    def report(self, listing: HostListing) -> None:
        with self._lock:
            self.reports.append(listing)

    def reported(self, host: str) -> list[HostListing]:
        with self._lock:
            return [r for r in self.reports if r.host == host]


@pytest.fixture
def pollers() -> Iterator[list[SlotPoller]]:
    made: list[SlotPoller] = []
    yield made
    for poller in made:
        poller.stop()


def make(
    pollers: list[SlotPoller], hosts: Hosts, interval: float = 60, burst_s: float = 60
) -> SlotPoller:
    poller = SlotPoller(list(hosts.names), hosts.list_host, hosts.report, interval, burst_s)
    pollers.append(poller)
    return poller


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_every_host_is_listed_at_start_and_again_after_its_interval(
    pollers: list[SlotPoller],
) -> None:
    hosts = Hosts("", "gpu")
    poller = make(pollers, hosts, interval=0.02)
    poller.start()
    wait_until(lambda: len(hosts.reported("")) >= 3 and len(hosts.reported("gpu")) >= 3)
    assert hosts.reported("gpu")[0] == HostListing("gpu", [slot("gpu-1")])


def test_a_failed_listing_is_one_line_and_the_host_is_listed_again(
    pollers: list[SlotPoller],
) -> None:
    hosts = Hosts("")
    hosts.fail[""] = RuntimeError("Incus is not running\nand a second line")
    poller = make(pollers, hosts, interval=0.02)
    poller.start()
    wait_until(lambda: len(hosts.reported("")) >= 2, what="two failed listings")
    first = hosts.reported("")[0]
    assert not first.ok and first.error == "Incus is not running" and first.slots == []
    del hosts.fail[""]
    wait_until(lambda: hosts.reported("")[-1].ok, what="a listing that works")


def test_a_hanging_host_never_delays_the_others_nor_piles_up_listings(
    pollers: list[SlotPoller],
) -> None:
    hosts = Hosts("", "slow")
    gate = hosts.gates["slow"] = threading.Event()
    poller = make(pollers, hosts)
    try:
        poller.start()
        wait_until(lambda: hosts.reported("") and hosts.calls["slow"] == 1, what="started")
        for _ in range(3):  # the local host is listed each time, the slow one not once more
            before = len(hosts.reported(""))
            poller.refresh()
            wait_until(lambda b=before: len(hosts.reported("")) > b, what="a local listing")
        assert hosts.calls["slow"] == 1 and not hosts.reported("slow")
        assert poller.queued == {"slow"} and "slow" in poller.listing
        assert len(threads_named("coi-list-slow")) == 1
    finally:
        gate.set()
    # The hanging listing, then exactly one queued one (the interval is a minute).
    wait_until(lambda: len(hosts.reported("slow")) == 2 and not poller.listing, what="done")
    assert hosts.calls["slow"] == 2 and not poller.queued
    assert poller.due_in("slow") is not None and poller.due_in("slow") > 30  # type: ignore[operator]


def test_refresh_soon_serves_a_burst_with_one_listing(pollers: list[SlotPoller]) -> None:
    hosts = Hosts("", "gpu")
    poller = make(pollers, hosts, interval=120, burst_s=60)
    poller.start()
    wait_until(lambda: hosts.reported("") and hosts.reported("gpu"), what="first listings")
    wait_until(lambda: not poller.listing, what="first listings done")
    poller.refresh_soon("")
    first = poller.due_in("")
    assert first is not None and 50 < first <= 60
    for _ in range(5):
        poller.refresh_soon("")
    later = poller.due_in("")
    assert later is not None and later <= first  # not pushed back by the later requests
    assert poller.due_in("gpu") is not None and poller.due_in("gpu") > first  # type: ignore[operator]

    quick_hosts = Hosts("", "gpu")
    quick = make(pollers, quick_hosts, burst_s=0.01)
    quick.start()
    wait_until(lambda: quick_hosts.calls == Counter({"": 1, "gpu": 1}), what="first listings")
    wait_until(lambda: not quick.listing, what="first listings done")
    for _ in range(5):
        quick.refresh_soon()  # every host
    wait_until(lambda: quick_hosts.calls == Counter({"": 2, "gpu": 2}), what="one listing each")


def test_stop_ends_the_scheduler_and_a_listing_in_flight_reports_nothing(
    pollers: list[SlotPoller],
) -> None:
    hosts = Hosts("hung")
    gate = hosts.gates["hung"] = threading.Event()
    poller = make(pollers, hosts, interval=0.01)
    poller.start()
    wait_until(lambda: hosts.calls["hung"] == 1, what="the listing started")
    poller.stop()
    poller.refresh()  # ignored once stopped
    assert not poller.join(0.05)  # the listing still hangs: stop never waits for it
    gate.set()
    assert poller.join(5)  # the scheduler and the listing ended
    assert hosts.reported("hung") == [] and hosts.calls["hung"] == 1


def lifecycle(name: str) -> dict[str, Any]:
    return {"type": "lifecycle", "metadata": {"source": f"/1.0/instances/{name}"}}


def test_lifecycle_events_of_our_containers_ask_for_a_listing() -> None:
    callbacks: list[Callable[[dict[str, Any]], None]] = []
    opened = threading.Event()
    streams = Counter[str]()

    def watch_events(callback: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
        streams["opened"] += 1
        if streams["opened"] == 1:
            raise ConnectionError("the daemon restarted")  # opened again after retry_s
        callbacks.append(callback)
        opened.set()
        stop.wait()

    changes: list[int] = []
    watcher = LifecycleWatcher(watch_events, "coi-", lambda: changes.append(1), retry_s=0.01)
    watcher.start()
    try:
        assert opened.wait(5)
        callbacks[0](lifecycle("coi-aaaaaaaa-1"))
        callbacks[0](lifecycle("someone-else"))
        callbacks[0]({"type": "logging", "metadata": {}})
        assert changes == [1] and streams["opened"] == 2
    finally:
        watcher.stop()
    assert watcher.join(5)
    callbacks[0](lifecycle("coi-aaaaaaaa-1"))  # after stop: nothing
    assert changes == [1]


def event(id: str) -> ThreatEvent:
    return ThreatEvent(
        id=id, timestamp="2026-05-01T10:20:30Z", level="high", category="c", title=id
    )


def test_threat_poller_delivers_batches_survives_a_failing_source_and_stops() -> None:
    source = PushSource()
    fails = {"left": 2}
    read = source.read_new

    def flaky() -> list[ThreatEvent]:
        if fails["left"]:
            fails["left"] -= 1
            raise OSError("audit dir unreadable")
        return read()

    source.read_new = flaky  # type: ignore[method-assign]
    poller = ThreatPoller(source, interval=0.005)
    batches: list[list[ThreatEvent]] = []
    runner = threading.Thread(target=poller.run, args=(batches.append,))
    runner.start()
    try:
        wait_until(lambda: poller.failures == 2, what="two failed polls")
        source.push(event("t1"))
        source.push(event("t2"))
        wait_until(lambda: batches, what="a batch")
        assert [e.id for batch in batches for e in batch] == ["t1", "t2"]
    finally:
        poller.stop()
    runner.join(5)
    assert not runner.is_alive()
    assert all(batches)  # empty polls are not delivered


def test_threat_poller_ends_when_its_caller_cancels() -> None:
    cancelled = threading.Event()
    poller = ThreatPoller(PushSource(), interval=0.005)
    runner = threading.Thread(target=poller.run, args=(lambda events: None, cancelled.is_set))
    runner.start()
    cancelled.set()
    runner.join(5)
    assert not runner.is_alive()


def test_one_line() -> None:
    assert one_line(RuntimeError("first\nsecond")) == "first"
    assert one_line(RuntimeError("")) == "RuntimeError"
