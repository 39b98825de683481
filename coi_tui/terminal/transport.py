"""Byte transports for an embedded terminal: a child process on a local pty (e.g.
`incus exec -t <c> -- tmux attach`), and a fake for tests. Output goes into a bounded queue:
when the UI falls behind, the reader blocks, the child's writes block, and tmux drops
intermediate frames instead of memory growing."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

DEFAULT_QUEUE_BYTES = 256 * 1024


class ByteQueue:
    """A FIFO of byte chunks bounded by total size; `put` blocks while it is full."""

    def __init__(self, limit: int = DEFAULT_QUEUE_BYTES) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._size

    def put(self, data: bytes, timeout: float | None = None) -> bool:
        """Append data; False when closed (or still full after timeout)."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._closed or self._size < self.limit, timeout=timeout
            ):
                return False
            if self._closed:
                return False
            self._chunks.append(data)
            self._size += len(data)
            return True

    def get(self, max_bytes: int) -> bytes:
        """Up to max_bytes without blocking (b'' when empty)."""
        with self._cond:
            out: list[bytes] = []
            taken = 0
            while self._chunks and taken < max_bytes:
                chunk = self._chunks.popleft()
                room = max_bytes - taken
                if len(chunk) > room:
                    self._chunks.appendleft(chunk[room:])
                    chunk = chunk[:room]
                out.append(chunk)
                taken += len(chunk)
            self._size -= taken
            if taken:
                self._cond.notify_all()
            return b"".join(out)

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

    def close(self) -> None: ...


class FakeTransport:
    """Records writes and resizes; tests push output with `emit`."""

    def __init__(self) -> None:
        self.queue = ByteQueue()
        self.written: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []
        self.closed = False

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


class PtyTransport:
    """Runs argv on a new pty; a daemon thread copies its output into `queue`."""

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
        self._reader = threading.Thread(target=self._read_loop, name="pty-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self._closed and self.process.poll() is None

    def _read_loop(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            self.bytes_read += len(data)
            # Blocks while the UI is behind: this is the backpressure.
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
        if self._closed:
            return
        self._closed = True
        self.queue.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            os.close(self._master)
