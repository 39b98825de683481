"""The threat feed: a Line-API list over a bounded deque of events, severity-coloured, that
follows the newest event while the view is at the bottom, and filters the model (not the
widget) by text; a leading `!` inverts the filter."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from coi_tui.dashboard.threats import ThreatEvent

MAX_EVENTS = 5000
LEVEL_COMPONENTS = {
    "critical": "threat-feed--critical",
    "high": "threat-feed--high",
    "warning": "threat-feed--warning",
    "info": "threat-feed--info",
}


def event_matches(event: ThreatEvent, query: str) -> bool:
    if not query:
        return True
    if query.startswith("!"):
        return not event.matches(query[1:]) if query[1:] else True
    return event.matches(query)


class ThreatFeed(ScrollView, can_focus=True):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "threat-feed--critical",
        "threat-feed--high",
        "threat-feed--warning",
        "threat-feed--info",
        "threat-feed--meta",
    }
    DEFAULT_CSS = """
    ThreatFeed { background: $surface; }
    ThreatFeed > .threat-feed--critical { color: $error; text-style: bold; }
    ThreatFeed > .threat-feed--high { color: $error; }
    ThreatFeed > .threat-feed--warning { color: $warning; }
    ThreatFeed > .threat-feed--info { color: $success; }
    ThreatFeed > .threat-feed--meta { color: $foreground-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("end,f", "follow", "Follow", id="feed.follow", tooltip="Jump to the newest event"),
        Binding("home", "scroll_home", "Top", show=False, id="feed.top"),
        Binding("up", "scroll_up", show=False),
        Binding("down", "scroll_down", show=False),
        Binding("pageup", "page_up", show=False),
        Binding("pagedown", "page_down", show=False),
    ]

    follow: reactive[bool] = reactive(True)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.events: deque[ThreatEvent] = deque(maxlen=MAX_EVENTS)
        self.shown: list[ThreatEvent] = []
        self.query_text = ""
        self.container_filter = ""
        self.unseen = 0
        self._strip_cache: LRUCache[tuple[str, int, int], Strip] = LRUCache(2000)
        self._seen_ids: set[str] = set()

    # ------------------------------------------------------------------ model
    def add_events(self, events: Iterable[ThreatEvent]) -> int:
        """Append events (ids already shown are skipped); returns how many were new."""
        at_bottom = self.follow or self.is_vertical_scroll_end
        added = 0
        for event in events:
            if event.id and event.id in self._seen_ids:
                continue
            if event.id:
                self._seen_ids.add(event.id)
            if len(self.events) == self.events.maxlen and self.events[0].id:
                self._seen_ids.discard(self.events[0].id)
            self.events.append(event)
            if self._wanted(event):
                self.shown.append(event)
                added += 1
        if len(self.shown) > MAX_EVENTS:
            del self.shown[: len(self.shown) - MAX_EVENTS]
        if added:
            self._update_size()
            if at_bottom:
                self.scroll_end(animate=False, immediate=True)
            else:
                self.unseen += added
            self._update_title()
            self.refresh()
        return added

    def _wanted(self, event: ThreatEvent) -> bool:
        if self.container_filter and event.container != self.container_filter:
            return False
        return event_matches(event, self.query_text)

    def set_filter(self, query: str) -> None:
        self.query_text = query
        self.shown = [e for e in self.events if self._wanted(e)]
        self._update_size()
        self.scroll_end(animate=False, immediate=True)
        self._update_title()
        self.refresh()

    def _update_size(self) -> None:
        width = max((len(self._line_text(e)) for e in self.shown[-200:]), default=0)
        self.virtual_size = Size(width, len(self.shown))

    def _update_title(self) -> None:
        parts = [f"{len(self.shown)} events"]
        if self.query_text:
            parts.append(f"filter: {self.query_text}")
        if self.unseen and not self.is_vertical_scroll_end:
            parts.append(f"paused: {self.unseen} new")
        self.border_subtitle = " · ".join(parts)

    # ------------------------------------------------------------------ follow
    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        # Scrolling up by hand pauses following; reaching the bottom resumes it.
        self.follow = self.is_vertical_scroll_end
        if self.follow:
            self.unseen = 0
        self._update_title()

    def action_follow(self) -> None:
        self.follow = True
        self.unseen = 0
        self.scroll_end(animate=False)
        self._update_title()

    # ------------------------------------------------------------------ rendering
    @staticmethod
    def _line_text(event: ThreatEvent) -> str:
        return (
            f"{event.time:8} {event.level.upper():8} {event.container:24} "
            f"{event.category:12} {event.title}"
            + (f" - {event.description}" if event.description else "")
            + (f" [{event.action}]" if event.action else "")
        )

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        base = self.rich_style
        if index >= len(self.shown):
            return Strip.blank(width, base)
        event = self.shown[index]
        key = (event.id or str(id(event)), index, width)
        strip = self._strip_cache.get(key)
        if strip is None:
            level = self.get_component_rich_style(
                LEVEL_COMPONENTS.get(event.level, "threat-feed--info")
            )
            meta = self.get_component_rich_style("threat-feed--meta")
            color = Style(color=level.color, bold=level.bold)
            text = self._line_text(event)
            head = f"{event.time:8} "
            segments = [
                Segment(head, base + Style(color=meta.color)),
                Segment(text[len(head) :], base + color),
            ]
            strip = Strip(segments)
            self._strip_cache[key] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strip_cache.clear()
