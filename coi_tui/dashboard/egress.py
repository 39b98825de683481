"""What the dashboard's Egress tab shows of one slot, read from its egress log (written by the
user's egress proxy, network/egress): the requests waiting for approval, the latest records
and totals per domain. Plain Python, run in a worker."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from coi_tui.core.text import clean
from coi_tui.network.egress.service import change_policy, domain_totals, log_path, parse_records

TAIL_BYTES = 256 * 1024  # the end of a log is what the tab shows
SHOWN = 40  # latest records


@dataclass(frozen=True)
class Pending:
    hold_id: str
    container: str
    domain: str
    port: int
    protocol: str
    until: float  # epoch seconds

    def left(self, now: float) -> int:
        return max(0, round(self.until - now))


@dataclass
class EgressView:
    container: str
    pending: list[Pending] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    totals: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    proxied: bool = False  # the container has an egress log at all


def tail_records(container: str, limit: int = TAIL_BYTES) -> list[dict[str, Any]] | None:
    """The complete records at the end of the container's log; None without a log."""
    path = log_path(container)
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - limit))
            data = handle.read()
    except OSError:
        return None
    if len(data) == limit:
        data = data[data.find(b"\n") + 1 :]  # a cut first line
    return parse_records(data)


def open_holds(records: list[dict[str, Any]], now: float) -> list[Pending]:
    decided = {r.get("hold_id") for r in records if r.get("type") != "pending"}
    found = []
    for record in records:
        if record.get("type") != "pending" or record.get("hold_id") in decided:
            continue
        try:
            hold = Pending(
                str(record["hold_id"]),
                str(record.get("container", "")),
                str(record.get("domain", "")),
                int(record.get("port", 0)),
                str(record.get("protocol", "")),
                float(record.get("until", 0)),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if hold.until > now and all(p.domain != hold.domain for p in found):
            found.append(hold)
    return found


def describe(record: dict[str, Any]) -> str:
    def field_(key: str, limit: int = 60) -> str:
        return clean(str(record.get(key, "")), limit)  # names come from the container

    stamp = field_("time")[11:19]
    kind = record.get("type")
    if kind == "policy":
        return f"{stamp}  policy   {field_('action')} {field_('pattern')}"
    if kind == "pending":
        return f"{stamp}  pending  {field_('domain')}:{field_('port')} (waits for approval)"
    if kind == "dns":
        answers = ",".join(str(a) for a in record.get("answers") or []) or "-"
        return (
            f"{stamp}  {field_('decision'):<8} dns {field_('qtype')} {field_('domain')} "
            f"-> {clean(answers, 60)}"
        )
    return (
        f"{stamp}  {field_('decision'):<8} {field_('protocol')} {field_('domain')}:"
        f"{field_('port')}  out {field_('bytes_out')} in {field_('bytes_in')}  "
        f"{field_('reason', 80)}"
    )


def read_view(container: str, now: float | None = None) -> EgressView:
    view = EgressView(container)
    records = tail_records(container)
    if records is None:
        return view
    view.proxied = True
    now = time.time() if now is None else now
    view.pending = open_holds(records, now)
    view.lines = [describe(r) for r in records[-SHOWN:]]
    view.totals = [
        (clean(d, 60), r["allowed"], r["denied"], r["bytes_out"], r["bytes_in"])
        for d, r in domain_totals(records).items()
    ]
    return view


def pending_counts(containers: list[str], now: float | None = None) -> dict[str, int]:
    """Open holds per container (the slot tree's badge); only those that have any."""
    now = time.time() if now is None else now
    counts = {}
    for name in containers:
        records = tail_records(name, 64 * 1024)
        if records:
            count = len(open_holds(records, now))
            if count:
                counts[name] = count
    return counts


def answer(hold: Pending, approve: bool) -> str:
    """Approve or deny a held request's name for the rest of the session (one line)."""
    action = "allow" if approve else "deny"
    # a held connection on another port than the web's is approved for that port
    entry = hold.domain if hold.port in (53, 80, 443) else f"{hold.domain}:{hold.port}"
    generation, pattern = change_policy(hold.container, action, entry)
    return f"{pattern} {'allowed' if approve else 'denied'} (policy generation {generation})"
