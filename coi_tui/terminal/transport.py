"""Byte transports for an embedded terminal: a child process on a local pty (e.g.
`incus exec -t <c> -- tmux attach`), and a fake for tests.

A reader thread copies the child's output into a ByteQueue as fast as it comes, with the time
each chunk arrived. The parser (feeder.py) decides what happens when the child outruns it: with a
child that can repaint (a tmux client), it drops the stale backlog and asks tmux to redraw; with
any other child it lowers the queue's limit so the reader blocks and the child's writes block."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, ClassVar, Protocol

# Only a safety net: the feeder bounds the backlog by time (parse rate x allowed lag).
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0  # a child still running this long after SIGTERM gets SIGKILL
KILL_WAIT_S = 1.0  # how long close waits for a child after SIGKILL


class ByteQueue:
    """A FIFO of byte chunks with their arrival times, bounded by total size; `put` blocks
    while it is full. The limit may change at any time (the feeder sets it from its parse
    rate)."""

    def __init__(self, limit: int = DEFAULT_QUEUE_BYTES) -> None:
        self._limit = limit
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()
        self.total_in = 0  # bytes ever put

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        with self._cond:
            self._limit = max(1, value)
            self._cond.notify_all()

    def put(self, data: bytes, timeout: float | None = None) -> bool:
        """Append data; False when closed (or still full after timeout)."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._closed or self._size < self._limit, timeout=timeout
            ):
                return False
            if self._closed:
                return False
            self._chunks.append((time.monotonic(), data))
            self._size += len(data)
            self.total_in += len(data)
            self._cond.notify_all()
            return True

    def get(self, max_bytes: int) -> bytes:
        """Up to max_bytes without blocking (b'' when empty)."""
        with self._cond:
            out: list[bytes] = []
            taken = 0
            while self._chunks and taken < max_bytes:
                arrived, chunk = self._chunks.popleft()
                room = max_bytes - taken
                if len(chunk) > room:
                    self._chunks.appendleft((arrived, chunk[room:]))
                    chunk = chunk[:room]
                out.append(chunk)
                taken += len(chunk)
            self._size -= taken
            if taken:
                self._cond.notify_all()
            return b"".join(out)

    def take_all(self) -> bytes:
        """Everything queued (the feeder drops it when it is too old to be worth parsing)."""
        with self._cond:
            data = b"".join(chunk for _, chunk in self._chunks)
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()
            return data

    def oldest(self) -> float | None:
        """When the oldest queued byte arrived (time.monotonic), None when empty."""
        with self._cond:
            return self._chunks[0][0] if self._chunks else None

    def wait(self, timeout: float) -> bool:
        """Block until there is data or the queue is closed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or self._size > 0, timeout=timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Transport(Protocol):
    """What the terminal widget needs from a connection to a child."""

    queue: ByteQueue

    @property
    def alive(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def resize(self, columns: int, lines: int) -> None: ...

    @property
    def can_redraw(self) -> bool:
        """True when `redraw()` makes the child repaint its whole screen (a tmux client), so
        output the parser could not keep up with may be dropped."""
        ...

    def redraw(self) -> None:
        """Ask the child to repaint everything (no-op when it cannot); never blocks."""
        ...

    def close(self) -> None:
        """End the child and release everything; may block for a bounded while (callers on a
        UI thread use close_in_background)."""
        ...


class FakeTransport:
    """Records writes, resizes and redraw requests; tests push output with `emit`. With
    `can_redraw` set, `on_redraw` (if any) is called for each request, e.g. to emit a
    repaint."""

    def __init__(self, can_redraw: bool = False) -> None:
        self.queue = ByteQueue()
        self.written: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []
        self.closed = False
        self.can_redraw = can_redraw
        self.redraws = 0
        self.on_redraw: Callable[[], None] | None = None

    def redraw(self) -> None:
        self.redraws += 1
        if self.on_redraw is not None:
            self.on_redraw()

    @property
    def alive(self) -> bool:
        return not self.closed

    @property
    def data(self) -> bytes:
        return b"".join(self.written)

    def emit(self, data: bytes) -> None:
        self.queue.put(data)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def resize(self, columns: int, lines: int) -> None:
        self.sizes.append((columns, lines))

    def close(self) -> None:
        self.closed = True
        self.queue.close()


def set_winsize(fd: int, columns: int, lines: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))


TMUX_CLIENT_COMMANDS = frozenset({"attach", "attach-session", "a", "new-session", "new"})
# Runs in the container next to the session: one line on stdin -> every client of the
# session repaints. `refresh-client` invalidates what tmux believes the client's terminal
# shows (modes, attributes, scroll region, cursor) and redraws it whole.
REFRESH_LOOP = (
    'session="$1"; shift; '
    "while read -r _; do "
    'for c in $(tmux "$@" list-clients -t "$session" -F "#{client_name}"); do '
    'tmux "$@" refresh-client -t "$c"; done; done'
)


def redraw_plan(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """How to make the tmux client that argv runs repaint, if it runs one.

    - ("signal", []): argv *is* the tmux client. SIGWINCH makes it re-read the size, and tmux
      answers a resize, even to the same size, with a full invalidate-and-redraw.
    - ("exec", helper): the client runs behind another command, e.g. `incus exec -t <c> --
      tmux attach -t S`. SIGWINCH would not reach it (the kernel only signals a *changed*
      size in the container), so a helper running next to it (the same command prefix with
      `-T`, then REFRESH_LOOP) refreshes the session's clients once per line it reads.
    - None: not a tmux client; its output must never be dropped."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if os.path.basename(arg) != "tmux":
            continue
        commands = (j for j in range(i + 1, len(argv)) if argv[j] in TMUX_CLIENT_COMMANDS)
        command = next(commands, None)
        if command is None:
            return None
        if i == 0:
            return ("signal", [])
        if "--" not in argv[:i] or argv[command] not in ("attach", "attach-session", "a"):
            return None
        rest = argv[command + 1 :]
        if "-t" not in rest[:-1]:
            return None
        session = rest[rest.index("-t") + 1]
        prefix = argv[: argv.index("--")]
        prefix = ["-T" if arg == "-t" else arg for arg in prefix]
        tmux_options = argv[i + 1 : command]
        return ("exec", [*prefix, "--", "sh", "-c", REFRESH_LOOP, "sh", session, *tmux_options])
    return None


def _end_helper(helper: subprocess.Popen[bytes]) -> None:
    """EOF on stdin ends the helper's loop (and its exec) cleanly; kill it if it lingers."""
    with contextlib.suppress(OSError):
        if helper.stdin is not None:
            helper.stdin.close()
    try:
        helper.wait(timeout=3)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


class PtyTransport:
    """Runs argv on a new pty; a daemon thread copies its output into `queue` as fast as it
    comes (see the module docstring for what bounds it)."""

    REDRAW_INTERVAL_S: ClassVar[dict[str, float]] = {"signal": 0.02, "exec": 0.15}
    close_timeout_s = CLOSE_TIMEOUT_S

    def __init__(
        self,
        argv: Sequence[str],
        columns: int,
        lines: int,
        env: Mapping[str, str] | None = None,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.queue = ByteQueue(queue_bytes)
        self.bytes_read = 0
        master, slave = os.openpty()
        set_winsize(master, columns, lines)
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        os.close(slave)
        self._master = master
        self._closed = False
        self._write_lock = threading.Lock()
        self._env = dict(env) if env is not None else None
        plan = redraw_plan(argv)
        self._redraw_kind = plan[0] if plan else ""
        self._helper_argv = plan[1] if plan else []
        self._helper: subprocess.Popen[bytes] | None = None
        self._helper_started = 0.0
        self._redraw_lock = threading.Lock()
        self.redraws = 0
        self._reader = threading.Thread(target=self._read_loop, name="pty-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self._closed and self.process.poll() is None

    @property
    def can_redraw(self) -> bool:
        return bool(self._redraw_kind)

    @property
    def redraw_interval_s(self) -> float:
        return self.REDRAW_INTERVAL_S.get(self._redraw_kind, 0.0)

    def redraw(self) -> None:
        if self._closed or not self._redraw_kind:
            return
        self.redraws += 1
        if self._redraw_kind == "signal":
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGWINCH)
            return
        with self._redraw_lock:
            helper = self._helper
            if helper is None or helper.poll() is not None:
                if time.monotonic() - self._helper_started < 2.0:
                    return  # it just died: do not spawn one per request
                helper = self._helper = self._spawn_helper()
                if helper is None:
                    return
            stdin: IO[bytes] | None = helper.stdin
            if stdin is None:
                return
            try:
                os.set_blocking(stdin.fileno(), False)
                os.write(stdin.fileno(), b"r\n")
            except (BlockingIOError, BrokenPipeError, OSError):
                pass  # requests pending already, or the helper is gone: either way, nothing to add

    def _spawn_helper(self) -> subprocess.Popen[bytes] | None:
        self._helper_started = time.monotonic()
        try:
            return subprocess.Popen(
                self._helper_argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            return None

    def _read_loop(self) -> None:
        while True:
            try:
                # No more than the queue takes: a read held while the queue is full is backlog
                # too (the feeder lowers the limit to a few tens of ms of parsing).
                data = os.read(self._master, min(65536, max(1024, self.queue.limit // 2)))
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            self.bytes_read += len(data)
            # Blocks only while the queue is over the limit the feeder set (see the module
            # docstring): that is the backpressure for children that cannot repaint.
            if not self.queue.put(data):
                break
        self.queue.close()

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        with self._write_lock:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._master, view)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                view = view[written:]

    def resize(self, columns: int, lines: int) -> None:
        if self._closed:
            return
        with contextlib.suppress(OSError):
            set_winsize(self._master, columns, lines)
        # Our child has no controlling terminal, so the kernel does not signal it: we do.
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGWINCH)

    def close(self) -> None:
        """Ends the child: SIGTERM, SIGKILL after close_timeout_s. Blocks at most
        close_timeout_s + KILL_WAIT_S (a child stuck in the kernel even after SIGKILL is left
        to subprocess's reaping); UI code calls it through close_in_background."""
        if self._closed:
            return
        self._closed = True
        self.queue.close()
        with self._redraw_lock:
            helper, self._helper = self._helper, None
        if helper is not None:
            threading.Thread(target=_end_helper, args=(helper,), daemon=True).start()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.close_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=KILL_WAIT_S)
        with contextlib.suppress(OSError):
            os.close(self._master)


def _close_quietly(transport: Transport) -> None:
    # A failed close has nobody to tell: a traceback on stderr would land on the dashboard.
    with contextlib.suppress(Exception):
        transport.close()


def close_in_background(transport: Transport) -> threading.Thread:
    """Close a transport on a thread of its own and return that thread at once: a close may
    wait for its child (PtyTransport: up to a few seconds), which the UI thread must never do.

    A plain thread, not a Textual worker: a close must run even when the widget or the app
    that asked for it goes away (a worker cancelled before it started never runs, and its
    child would outlive the app). Not a daemon either: quitting waits for the close, which is
    bounded, so no child is left behind."""
    thread = threading.Thread(target=_close_quietly, args=(transport,), name="terminal-close")
    thread.start()
    return thread
