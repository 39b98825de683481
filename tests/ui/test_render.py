"""Emulator and renderer: escape sequences in, styled segments out, dirty rows tracked."""

from __future__ import annotations

import threading

from rich.color import Color

from coi_tui.terminal.emulator import Emulator
from coi_tui.terminal.render import Renderer, map_color
from coi_tui.terminal.transport import DEFAULT_QUEUE_BYTES, ByteQueue, PtyTransport


def segments(emulator: Emulator, y: int, cursor_x: int | None = None) -> list[tuple[str, object]]:
    rendered = Renderer().render_row(emulator.screen, y, emulator.columns, cursor_x)
    return [(seg.text, seg.style) for seg in rendered]


def test_runs_of_equal_style_become_one_segment() -> None:
    emu = Emulator(20, 3)
    emu.feed(b"ab\x1b[1;31mred\x1b[0m\x1b[42mgr\x1b[0m")
    segs = segments(emu, 0)
    assert [text for text, _ in segs] == ["ab", "red", "gr", " " * 13]
    red = segs[1][1]
    assert red.bold and red.color == Color.from_ansi(1)
    green_bg = segs[2][1]
    assert green_bg.bgcolor == Color.from_ansi(2) and green_bg.color is None
    assert segs[0][1].color is None  # default colour: the widget's own shows through


def test_bright_256_and_truecolor_and_attributes() -> None:
    emu = Emulator(30, 2)
    emu.feed(b"\x1b[91mB\x1b[0m\x1b[38;5;208mO\x1b[0m\x1b[38;2;1;2;3mT\x1b[0m")
    emu.feed(b"\x1b[3mi\x1b[0m\x1b[4mu\x1b[0m\x1b[9ms\x1b[0m\x1b[7mr\x1b[0m")
    segs = segments(emu, 0)
    assert segs[0] == ("B", segs[0][1]) and segs[0][1].color == Color.from_ansi(9)
    assert segs[1][1].color.triplet is not None  # 256-colour index -> rgb
    assert segs[2][1].color == Color.parse("#010203")
    styles = {text: style for text, style in segs}
    assert styles["i"].italic and styles["u"].underline and styles["s"].strike
    assert styles["r"].reverse


def test_cursor_is_drawn_as_reverse_video_only_where_asked() -> None:
    emu = Emulator(10, 2)
    emu.feed(b"abc")
    with_cursor = segments(emu, 0, cursor_x=3)
    assert [t for t, _ in with_cursor] == ["abc", " ", " " * 6]
    assert with_cursor[1][1].reverse
    assert not any(style.reverse for _, style in segments(emu, 0))


def test_wide_characters_keep_the_row_width() -> None:
    emu = Emulator(10, 1)
    emu.feed("日本x".encode())
    text = "".join(t for t, _ in segments(emu, 0))
    assert text.startswith("日本x")
    assert len(text) == 10 - 2  # two placeholder cells skipped, each CJK char is 2 cells


def test_split_utf8_survives_separate_reads() -> None:
    emu = Emulator(10, 1)
    data = "ü".encode()
    emu.feed(data[:1])
    emu.feed(data[1:])
    assert emu.row_text(0).startswith("ü")


def test_dirty_rows_and_versions() -> None:
    emu = Emulator(10, 5)
    emu.take_dirty()
    before = list(emu.versions)
    emu.feed(b"\x1b[3;1Hxyz")
    dirty = emu.take_dirty()
    assert 2 in dirty and 4 not in dirty
    assert emu.versions[2] != before[2] and emu.versions[4] == before[4]
    assert emu.take_dirty() == set()  # nothing new since


def test_cursor_move_dirties_old_and_new_rows() -> None:
    emu = Emulator(10, 5)
    emu.take_dirty()
    emu.feed(b"\x1b[4;1H")  # no text drawn: pyte marks nothing itself
    assert emu.take_dirty() == {0, 3}


def test_dsr_and_da_are_answered() -> None:
    replies: list[bytes] = []
    emu = Emulator(10, 5, reply=replies.append)
    emu.feed(b"\x1b[2;3H\x1b[6n")
    emu.feed(b"\x1b[5n")
    emu.feed(b"\x1b[c")
    assert replies == [b"\x1b[2;3R", b"\x1b[0n", b"\x1b[?6c"]


def test_modes_seen_by_key_translation() -> None:
    emu = Emulator(10, 2)
    assert not emu.app_cursor and not emu.bracketed_paste
    emu.feed(b"\x1b[?1h\x1b[?2004h")
    assert emu.app_cursor and emu.bracketed_paste
    emu.feed(b"\x1b[?1l\x1b[?2004l")
    assert not emu.app_cursor and not emu.bracketed_paste


def test_tmux_margins_with_private_flag_do_not_crash() -> None:
    emu = Emulator(10, 5)
    emu.feed(b"\x1b[?2;4r")  # private DECSTBM
    emu.feed(b"ok")
    assert "ok" in emu.text()


def test_resize_changes_size_and_dirties_everything() -> None:
    emu = Emulator(10, 5)
    emu.take_dirty()
    emu.resize(20, 8)
    assert (emu.columns, emu.lines) == (20, 8)
    assert emu.take_dirty() == set(range(8))


def test_map_color() -> None:
    assert map_color("default") is None
    assert map_color("brown") == Color.from_ansi(3)
    assert map_color("brightbrown") == Color.from_ansi(11)
    assert map_color("ff0000") == Color.parse("#ff0000")
    assert map_color("nonsense") is None


def test_byte_queue_is_bounded_and_blocks_the_writer() -> None:
    queue = ByteQueue(limit=10)
    assert queue.put(b"x" * 10)
    assert not queue.put(b"y", timeout=0.05)  # full: the reader would block here
    released = threading.Event()

    def writer() -> None:
        queue.put(b"z")
        released.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert queue.get(4) == b"xxxx"
    assert released.wait(2)
    thread.join()
    assert queue.get(100) == b"xxxxxxz"
    queue.close()
    assert not queue.put(b"late")


def test_pty_transport_round_trip_and_resize() -> None:
    script = (
        "import sys,os,signal,tty\n"
        "tty.setraw(0)\n"
        "def say(*a): print(*a, end='\\r\\n', flush=True)\n"
        "signal.signal(signal.SIGWINCH, lambda *a: say('size', *os.get_terminal_size(0)))\n"
        "say('ready', *os.get_terminal_size(0))\n"
        "say('got', repr(sys.stdin.read(1)))\n"
        "sys.stdin.read(1)\n"
    )
    import sys
    import time

    transport = PtyTransport([sys.executable, "-c", script], 33, 11)
    emu = Emulator(60, 10)
    deadline = time.monotonic() + 10

    def pump(text: str) -> None:
        while text not in emu.text():
            assert time.monotonic() < deadline, emu.text()
            emu.feed(transport.queue.get(4096))
            time.sleep(0.01)

    pump("ready 33 11")
    transport.write(b"q")
    pump("got 'q'")
    transport.resize(50, 9)
    pump("size 50 9")
    transport.close()
    assert not transport.alive


# ---------------------------------------------------------------------- the parse pipeline
def test_fast_draw_matches_pyte() -> None:
    """The ASCII fast path leaves exactly the screen pyte's own draw would."""
    import random

    import pyte

    rng = random.Random(7)
    pieces = [b"ab", b" ", b"\r", b"\n", b"\x1b[31m", b"\x1b[0m", b"\x1b[5;7H", b"x" * 90]
    pieces += [b"\x1b[?7l", b"\x1b[?7h", b"\x1b[4h", b"\x1b[4l", "日本".encode(), b"\x1b(0q\x1b(B"]
    for _ in range(20):
        data = b"".join(rng.choice(pieces) for _ in range(300))
        ours = Emulator(20, 5)
        ours.feed(data)
        reference = pyte.Screen(20, 5)
        pyte.ByteStream(reference).feed(data)
        # (Compared cell by cell: pyte's own `display` trips over half-overwritten wide chars.)
        assert all(
            ours.screen.buffer[y][x] == reference.buffer[y][x] for y in range(5) for x in range(20)
        )
        assert (ours.screen.cursor.x, ours.screen.cursor.y) == (
            reference.cursor.x,
            reference.cursor.y,
        )
        assert set(reference.dirty) <= set(ours.screen.dirty)


def test_redraw_plan_for_tmux_clients() -> None:
    from coi_tui.terminal.transport import redraw_plan

    assert redraw_plan(["tmux", "-L", "s", "new-session", "sh"]) == ("signal", [])
    assert redraw_plan(["python3", "-c", "print()"]) is None
    kind, helper = redraw_plan(
        ["incus", "exec", "c1", "--user", "1000", "-t", "--", "tmux", "attach", "-t", "S", "-r"]
    ) or ("", [])
    assert kind == "exec"
    # The same exec prefix without a tty, a shell loop, and the session as its argument.
    assert helper[: helper.index("--")] == ["incus", "exec", "c1", "--user", "1000", "-T"]
    assert helper[helper.index("--") + 1 : helper.index("--") + 3] == ["sh", "-c"]
    assert helper[-1] == "S" and "refresh-client" in helper[-3]


def wait_until(condition: object, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_feeder_parses_on_its_thread_and_never_drops_without_a_repaint() -> None:
    from coi_tui.terminal.feeder import Feeder

    emu = Emulator(40, 5)
    queue = ByteQueue()
    feeder = Feeder(emu, queue, max_lag_s=0.001)
    feeder.start()
    try:
        data = b"".join(b"line %d\r\n" % i for i in range(5000))
        for k in range(0, len(data), 4096):
            assert queue.put(data[k : k + 4096], timeout=5)
        wait_until(lambda: feeder.stats.bytes_parsed == len(data))
        assert feeder.stats.bytes_dropped == 0 and feeder.stats.drops == 0
        with feeder.lock:
            assert "line 4999" in emu.text()
        # The byte limit follows the parse rate (backpressure for the reader), not a constant.
        assert queue.limit < DEFAULT_QUEUE_BYTES
    finally:
        feeder.stop()
    assert feeder.finished.wait(2)


def test_feeder_drops_stale_output_keeps_modes_and_asks_for_a_repaint() -> None:
    from coi_tui.terminal.feeder import Feeder

    emu = Emulator(40, 5)
    queue = ByteQueue()
    redraws: list[float] = []
    feeder = Feeder(emu, queue, can_redraw=True, redraw=lambda: redraws.append(1), max_lag_s=0.01)
    # A backlog far beyond 10 ms of parsing, with mode changes in the middle of it, and ending
    # half-way through an escape sequence.
    queue.put(b"\x1b[?1h\x1b[?2004h" + b"\x1b[32mflood\x1b[0m\r\n" * 50000 + b"\x1b[3")
    feeder.start()
    try:
        wait_until(lambda: feeder.stats.drops >= 1)
        assert redraws, "a drop asks the child to repaint"
        # What the child repaints arrives next and is parsed in full.
        repaint = b"4;1H" + b"\x1b[H\x1b[2J" + b"\x1b[1;1Hrepainted"
        queue.put(repaint)
        wait_until(lambda: "repainted" in emu.text())
        assert feeder.stats.bytes_dropped > 0
        assert feeder.stats.bytes_parsed + feeder.stats.bytes_dropped == queue.total_in
        # Modes set by the dropped output still hold (cursor keys, bracketed paste).
        assert emu.app_cursor and emu.bracketed_paste
        # The half sequence cut by the drop did not swallow the repaint's first bytes.
        assert emu.row_text(0).startswith("repainted")
        # Once the output is quiet, one more repaint is asked for (the one that arrived may
        # have been cut by a later drop on a busy machine), and only one.
        wait_until(lambda: len(redraws) == feeder.stats.drops + 1)
        assert not feeder.repair_pending and feeder.stats.redraws_requested == len(redraws)
    finally:
        feeder.stop()
