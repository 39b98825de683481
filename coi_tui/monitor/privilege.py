"""Privilege transitions in a watched container (issue 17): a process becoming root other
than through the image's own setuid programs, and failed attempts (su, sudo) from the logs.

Sources, all read from the host, trusting nothing in the container:
- the proc connector's uid and gid events (`PROC_EVENT_UID`/`GID`): the kernel sends one
  whenever a task's real or effective id changes, at a setuid exec as at a setuid() call,
  with the new real and effective id as the host sees them. The capture process reads the process's
  executable (the file, by device and inode) at once, before anything else, and forwards
  the event (`id_detail`), and forwards the exit status of every process it saw change uid.
  No per-exec cost: an exec that changes no uid sends no uid event.
- a baseline of the image's setuid/setgid programs, taken at watch time through
  /proc/<init>/root: (device, inode, size, mtime) each, so a program planted later, or one
  replaced in place, does not match.
- auth logs tailed through /proc/<init>/root on each full pass: coi's own sudo log
  (`SUDO_LOG`, which the session hook `sudo_log_hook.py` asks sudo to write with a sudoers
  drop-in: sudo writes it itself, no syslog daemon needed) and auth.log, secure, syslog when
  an image has a syslog daemon. Opened one component at a time with O_NOFOLLOW (the
  container's root is hostile: an absolute symlink there would resolve on the host), as
  O_PATH first so a FIFO or a device is never opened for reading, and read in bounded
  chunks.

Judgement (container root = the host uid the container's init runs as):
- a process whose effective uid becomes root while its uids before (its last known ones,
  else its parent's) were both the container's non-root users is an escalation (a host
  process entering the container, such as `incus exec`'s helper, had host root before;
  the host's Incus binary is recognised by its inode). Through one of the image's setuid
  programs it is expected (su is followed to its end, sudo's command is logged by sudo);
  through anything else (a setuid copy of bash the agent planted, a program with file
  capabilities calling setuid(0)) it is HIGH `priv.setuid-root`; when the process is gone
  before its executable could be read, WARNING `priv.root-unverified`. Likewise a
  non-root process taking another group (a setgid exec: gid events) through a program
  that is not one of the image's is HIGH `priv.setgid` (a setgid-shadow cat reads hashes),
  WARNING `priv.setgid-unverified` when it was gone before its program could be read.
- `su` by a non-root user that exits non-zero without ever switching user (no child of it
  changed uid) is HIGH `priv.su-failed`: the image's users have no passwords, and su's own
  failure message goes to journald (binary, not read here), so its exit is the signal.
- log lines: failures (not in sudoers, a password required or wrong, command not allowed,
  FAILED SU, PAM authentication failures) are HIGH `auth.failed`; sudo's COMMAND lines are
  INFO `auth.sudo`.

Pure standard library (the daemon runs as root); never prints.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from coi_tui.core.text import clean
from coi_tui.monitor.events import Threat

# Written by sudo itself (the sudoers drop-in below), read by the daemon.
SUDO_LOG = "/var/log/coi-sudo.log"
SUDOERS_DROP_IN = "/etc/sudoers.d/zz-coi-log"
# loglinelen=0: one line per event (sudo wraps its log file at 80 columns by default).
SUDOERS_TEXT = (
    "# coi: sudo writes its own log, which the host's threat monitor reads\n"
    f"Defaults logfile={SUDO_LOG}\n"
    "Defaults loglinelen=0\n"
)
# Files tailed, in the container's /var/log. Sudo's lines are taken from the syslog files
# only when coi's own sudo log does not exist (else each would be reported twice).
LOG_DIR = "var/log"
AUTH_LOGS = (os.path.basename(SUDO_LOG), "auth.log", "secure", "syslog")
READ_CHUNK = 256 << 10  # per file and pass: a flood is read over several passes
LINE_LIMIT = 4096  # longer lines are cut (a line is judged on its first 4 KiB)
EVIDENCE_LINE = 300
# Where an image keeps its setuid programs (walked at watch time, two levels at most).
SETUID_DIRS = ("usr/bin", "usr/sbin", "usr/libexec", "usr/lib", "bin", "sbin")
SETUID_DEPTH = 2
SETUID_MAX_ENTRIES = 60000  # the walk's bound (a full image's /usr/lib has ~20k entries)
CREDS_KEPT = 4096  # last known uids per process, for processes that changed uid
STARTED = time.time()  # the daemon's start: log lines older than this are not re-reported

# (what to look for, pattern name): failures and refusals, in sudo's log and in syslog
FAILURE_PATTERNS = (
    ("NOT in sudoers", "not in sudoers"),
    ("is not in the sudoers file", "not in sudoers"),
    ("may not run sudo", "not in sudoers"),
    ("incorrect password attempt", "incorrect password"),
    ("a password is required", "password required"),
    ("command not allowed", "command not allowed"),
    ("not allowed to execute", "command not allowed"),
    ("FAILED SU", "FAILED SU"),
    ("authentication failure", "authentication failure"),
)
O_PATH = getattr(os, "O_PATH", 0o10000000)
CONTAINER_IDS = 65536  # host ids from the container's root up: its users (Incus's map)
# Where the host's Incus daemon may be installed: its helpers (`incusd forkexec` for
# `incus exec`, forkfile, forkstart) enter a container as host root and switch to its root.
INCUSD_PATHS = (
    "/usr/libexec/incus/incusd",
    "/usr/lib/incus/incusd",
    "/usr/sbin/incusd",
    "/usr/bin/incusd",
    "/opt/incus/bin/incusd",
    "/snap/incus/current/bin/incusd",
)


@dataclass(frozen=True)
class IdChange:
    """A uid or gid event as the capture process forwards it (host ids)."""

    real: int
    effective: int
    exe: str  # the executable's path as the kernel names it ("" when gone)
    identity: tuple[int, int, int, int] | None  # (dev, ino, size, mtime_ns) of the exe
    # (real, effective) uid of the process and of its parent, read with the program: the
    # daemon judges later, when a quick program and the shell that ran it may be gone
    uids: tuple[int, int] | None = None
    parent_uids: tuple[int, int] | None = None


def id_detail(pid: int, parent: int, real: int, effective: int) -> list[str]:
    """What the capture process forwards of a uid or gid event (the new real and effective
    id), read at once: the process's executable, by the file it runs (a path can be
    swapped, the inode cannot), and its uids and its parent's ("-1" when gone)."""
    try:
        info = os.stat(f"/proc/{pid}/exe")
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return [str(real), str(effective)]
    own = proc_uids(pid) or (-1, -1)
    above = (proc_uids(parent) if parent else None) or (-1, -1)
    return [
        str(real),
        str(effective),
        exe,
        *(str(v) for v in (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)),
        *(str(v) for v in (*own, *above)),
    ]


def parse_id_detail(detail: list[str]) -> IdChange | None:
    def pair(values: list[str]) -> tuple[int, int] | None:
        ids = [int(v) for v in values]
        return (ids[0], ids[1]) if len(ids) == 2 and min(ids) >= 0 else None

    try:
        real, effective = int(detail[0]), int(detail[1])
        if len(detail) < 7:
            return IdChange(real, effective, "", None)
        dev, ino, size, mtime = (int(v) for v in detail[3:7])
        own, above = pair(detail[7:9]), pair(detail[9:11])
    except (ValueError, IndexError, TypeError):
        return None
    return IdChange(real, effective, str(detail[2]), (dev, ino, size, mtime), own, above)


@functools.cache
def host_helpers() -> frozenset[tuple[int, int]]:
    """(dev, ino) of the host's Incus daemon binary: a host file, which no program of the
    container can be (a path inside the container can be made to look the same; an inode
    of the host's filesystem cannot)."""
    found = set()
    for path in INCUSD_PATHS:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            found.add((info.st_dev, info.st_ino))
    return frozenset(found)


def proc_uids(pid: int, field: bytes = b"Uid:") -> tuple[int, int] | None:
    """(real, effective) uid of a process (`field` b"Gid:": gid), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field):
                    fields = line.split()
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return int(raw[raw.rfind(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


# ---------------------------------------------------------------------- the container's files
@contextlib.contextmanager
def container_root(init_pid: int) -> Iterator[int]:
    """An O_PATH fd on the container's root directory (its init's root)."""
    fd = os.open(f"/proc/{init_pid}/root", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def open_path(root: int, relative: str) -> int:
    """An O_PATH fd on `relative` under `root`, every component opened with O_NOFOLLOW:
    a symlink anywhere on the way fails (ELOOP/ENOTDIR) instead of leading elsewhere."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise OSError(22, f"not a plain relative path: {relative!r}")
    current = root
    try:
        for part in parts[:-1]:
            step = os.open(
                part, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
            )
            if current != root:
                os.close(current)
            current = step
        return os.open(parts[-1], O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
    finally:
        if current != root:
            os.close(current)


def setuid_baseline(init_pid: int) -> dict[tuple[int, int], tuple[int, int, str]]:
    """The container's setuid/setgid programs (see setuid_programs)."""
    try:
        with container_root(init_pid) as root:
            return setuid_programs(root)
    except OSError:
        return {}


def setuid_programs(root: int) -> dict[tuple[int, int], tuple[int, int, str]]:
    """The setuid/setgid programs in SETUID_DIRS under the directory fd `root`: (dev, ino)
    -> (size, mtime_ns, path). Symlinked directories are not entered (merged /bin is
    /usr/bin anyway)."""
    found: dict[tuple[int, int], tuple[int, int, str]] = {}
    budget = [SETUID_MAX_ENTRIES]

    def walk(dir_fd: int, path: str, depth: int) -> None:
        try:
            listing = os.scandir(dir_fd)
        except OSError:
            return
        subdirs: list[str] = []
        with listing:
            for entry in listing:
                budget[0] -= 1
                if budget[0] < 0:
                    return
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    subdirs.append(entry.name)
                elif stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    key = (info.st_dev, info.st_ino)
                    found[key] = (info.st_size, info.st_mtime_ns, f"{path}/{entry.name}")
        if depth >= SETUID_DEPTH:
            return
        for name in subdirs:
            try:
                sub = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except OSError:
                continue
            try:
                walk(sub, f"{path}/{name}", depth + 1)
            finally:
                os.close(sub)

    for relative in SETUID_DIRS:
        try:
            handle = open_path(root, relative)
        except OSError:
            continue
        try:
            if not stat.S_ISDIR(os.fstat(handle).st_mode):
                continue
            listing_fd = os.open(
                f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError:
            continue
        finally:
            os.close(handle)
        try:
            walk(listing_fd, "/" + relative, 1)
        finally:
            os.close(listing_fd)
    return found


@dataclass
class LogTail:
    """How far one log file has been read."""

    identity: tuple[int, int]  # (dev, ino): a new file (rotation) is read from its start
    offset: int
    partial: bytes = b""  # an unfinished last line


def read_new(
    log_dir: int, name: str, tail: LogTail | None, since: float
) -> tuple[LogTail | None, list[str]]:
    """New complete lines of the log file `name` in the directory fd `log_dir` since `tail`
    (at most READ_CHUNK bytes). A file first seen now is read from its start if it changed
    after `since`, else from its end (a daemon restarted does not report again what it
    reported before). One fstatat when nothing changed; a symlink, FIFO or device at the
    name is never opened for reading."""
    try:
        info = os.stat(name, dir_fd=log_dir, follow_symlinks=False)
    except OSError:
        return tail, []
    if not stat.S_ISREG(info.st_mode):
        return tail, []
    identity = (info.st_dev, info.st_ino)
    if tail is None or tail.identity != identity:
        start = 0 if (tail is not None or info.st_mtime >= since) else info.st_size
        tail = LogTail(identity, start)
    if info.st_size < tail.offset:  # truncated: start again
        tail.offset, tail.partial = 0, b""
    if info.st_size == tail.offset:
        return tail, []
    try:
        handle = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=log_dir)
    except OSError:
        return tail, []
    try:
        again = os.fstat(handle)  # the same regular file as just seen (not swapped since)
        if not stat.S_ISREG(again.st_mode) or (again.st_dev, again.st_ino) != identity:
            return tail, []
        # O_NOCTTY: never a terminal's controlling process, whatever is found there
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(f"/proc/self/fd/{handle}", flags)
    except OSError:
        return tail, []
    finally:
        os.close(handle)
    try:
        data = os.pread(fd, READ_CHUNK, tail.offset)
    except OSError:
        return tail, []
    finally:
        os.close(fd)
    tail.offset += len(data)
    *lines, rest = (tail.partial + data).split(b"\n")
    tail.partial = rest[:LINE_LIMIT]
    return tail, [line[:LINE_LIMIT].decode("utf-8", "replace") for line in lines]


def judge_line(line: str, log_file: str, sudo_lines: bool) -> Threat | None:
    """A failure (HIGH) or a sudo command (INFO) in an auth log line; None otherwise.
    `sudo_lines`: whether sudo's own lines count here (not in syslog when coi's sudo log
    exists)."""
    from_sudo = log_file == SUDO_LOG or " sudo" in line[:200]
    if from_sudo and not sudo_lines:
        return None
    shown = clean(line, EVIDENCE_LINE)
    for needle, pattern in FAILURE_PATTERNS:
        if needle in line:
            return Threat(
                "auth.failed",
                "high",
                "auth",
                "Failed privilege attempt in the container's auth log",
                f"{pattern}: {shown}",
                {"auth": {"log_file": log_file, "line": shown, "pattern": pattern}},
                dedup_key=f"auth.failed:{log_file}:{shown}",
            )
    if from_sudo and "COMMAND=" in line:
        return Threat(
            "auth.sudo",
            "info",
            "auth",
            "sudo command",
            shown,
            {"auth": {"log_file": log_file, "line": shown, "pattern": "sudo command"}},
            dedup_key=f"auth.sudo:{log_file}:{shown}",
        )
    return None


SU_VALUE_OPTIONS = frozenset({"-c", "--command", "-s", "--shell", "-g", "--group", "-G",
                              "--supp-group", "-w", "--whitelist-environment", "-C",
                              "--session-command"})  # fmt: skip


def su_target(argv: list[str]) -> str:
    """The user su was asked to become (root when none is named)."""
    args = iter(argv[1:])
    for arg in args:
        if arg in SU_VALUE_OPTIONS:
            next(args, None)
        elif arg == "--":
            return next(args, "root")
        elif arg == "-" or arg.startswith("-"):
            continue
        else:
            return arg
    return "root"


# ---------------------------------------------------------------------- one container
@dataclass
class SuAttempt:
    uid: int  # the container's uid of the user running it
    switched: bool = False  # a child of it changed uid: the authentication succeeded


@dataclass
class PrivilegeWatch:
    """The privilege state of one watched container (see the module docstring)."""

    init_pid: int
    root_uid: int = -1  # host uid of the container's root
    root_gid: int = -1  # and its gid
    baseline: dict[tuple[int, int], tuple[int, int, str]] = field(default_factory=dict)
    creds: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (ruid, euid)
    su: dict[int, SuAttempt] = field(default_factory=dict)
    tails: dict[str, LogTail | None] = field(default_factory=dict)
    since: float = STARTED

    @classmethod
    def start(cls, init_pid: int, since: float = STARTED) -> PrivilegeWatch:
        """At watch time: the container's root uid and its setuid programs."""
        uids, gids = proc_uids(init_pid), proc_uids(init_pid, b"Gid:")
        root_uid, root_gid = (uids or (-1, -1))[0], (gids or (-1, -1))[0]
        return cls(init_pid, root_uid, root_gid, setuid_baseline(init_pid), since=since)

    def expected(self, change: IdChange) -> str:
        """The baseline path of the program that made the change, "" when it is not one
        of the image's setuid programs as they were at watch time."""
        if change.identity is None:
            return ""
        dev, ino, size, mtime = change.identity
        known = self.baseline.get((dev, ino))
        if known is None or known[:2] != (size, mtime):
            return ""
        return known[2]

    def on_uid(
        self, pid: int, parent: int, change: IdChange, command: Callable[[int], str]
    ) -> list[Threat]:
        """One uid event of a process of this container (`command`: its command line as
        far as the daemon knows it)."""
        root = self.root_uid
        before = self.creds.pop(pid, None)
        if len(self.creds) >= CREDS_KEPT:
            self.creds.clear()
        self.creds[pid] = (change.real, change.effective)
        if change.identity is not None and change.identity[:2] in host_helpers():
            return []  # the host's Incus entering the container (`incus exec`, file push)
        parent = parent or proc_parent(pid)
        attempt = self.su.get(parent)
        if attempt is not None:
            attempt.switched = True  # su's child takes the target's identity after auth
        if root < 0 or change.effective != root:
            return []
        if before is None:
            before = change.parent_uids or (proc_uids(parent) if parent else None)
        if before is not None and min(before) <= root:
            # it was root already (a root process taking its euid back), or a host process
            # entering the container (`incus exec` starts as host root: uid 0)
            return []
        was = before[0] if before is not None else change.real  # its uid before this
        if not root < was < root + CONTAINER_IDS:
            # not one of the container's users: a host process entering it (LXC's attach
            # and start helpers run as host root, from a memfd copy named liblxc), whose
            # history was not seen
            return []
        user = was - root
        program = self.expected(change)
        if program:
            if os.path.basename(program) != "su":
                return []  # sudo logs its command itself; passwd, mount... are quiet
            if len(self.su) >= CREDS_KEPT:  # exits lost (ENOBUFS): never grow without end
                self.su.clear()
            self.su[pid] = SuAttempt(user)
            return [  # (its command line is not there yet: the exec event comes next)
                Threat(
                    "priv.su",
                    "info",
                    "privilege",
                    "su started by a non-root user",
                    f"uid {user} started {program} (pid {pid})",
                    {"process": {"pid": pid, "exe": program, "uid": user}},
                    dedup_key=f"priv.su:{pid}",
                )
            ]
        evidence = {
            "process": {
                "pid": pid,
                "exe": clean(change.exe, EVIDENCE_LINE),
                "uid": user,
                "euid": 0,
                "command": clean(command(pid), EVIDENCE_LINE),
                "how": "setuid exec" if change.real != root else "setuid() call",
            }
        }
        if change.identity is None:
            if before is None:
                return []  # gone, and nothing known of it: nothing to judge
            return [
                Threat(
                    "priv.root-unverified",
                    "warning",
                    "privilege",
                    "A process became root and was gone before its program was read",
                    f"pid {pid} (uid {user}) became root",
                    evidence,
                    dedup_key=f"priv.root-unverified:{pid}",
                )
            ]
        return [
            Threat(
                "priv.setuid-root",
                "high",
                "privilege",
                "A process became root outside the image's setuid programs",
                f"uid {user} became root through {clean(change.exe, EVIDENCE_LINE)}",
                evidence,
                dedup_key=f"priv.setuid-root:{pid}:{change.exe}",
            )
        ]

    def on_gid(self, pid: int, parent: int, change: IdChange) -> list[Threat]:
        """One gid event: a non-root process whose effective gid became other than its
        real one (a setgid exec) through a program that is not one of the image's setgid
        programs (a planted `chgrp shadow; chmod g+s` copy of cat) is HIGH. Its uids are
        the ones read with the event, else the ones its uid events left, else its parent's."""
        if change.effective == change.real:
            return []  # a full switch or a drop back to its own group: nothing taken
        if change.identity is not None and change.identity[:2] in host_helpers():
            return []
        uids = (
            change.uids
            or self.creds.get(pid)
            or change.parent_uids
            or proc_uids(parent or proc_parent(pid))
        )
        if uids is None or min(uids) <= self.root_uid or self.expected(change):
            return []  # root (or the host) may take any group
        group = change.effective - self.root_gid if change.effective >= self.root_gid else -1
        user = uids[0] - self.root_uid
        evidence = {
            "process": {
                "pid": pid,
                "exe": clean(change.exe, EVIDENCE_LINE),
                "uid": user,
                "egid": group,
            }
        }
        if change.identity is None:  # gone at once (the image's chage -l, or not)
            return [
                Threat(
                    "priv.setgid-unverified",
                    "warning",
                    "privilege",
                    "A process took another group and was gone before its program was read",
                    f"pid {pid} (uid {user}) took gid {group}",
                    evidence,
                    dedup_key=f"priv.setgid-unverified:{pid}",
                )
            ]
        return [
            Threat(
                "priv.setgid",
                "high",
                "privilege",
                "A process took a group outside the image's setgid programs",
                f"uid {user} took gid {group} through {clean(change.exe, EVIDENCE_LINE)}",
                evidence,
                dedup_key=f"priv.setgid:{pid}:{change.exe}",
            )
        ]

    def on_exit(
        self,
        pid: int,
        status: int,
        command: Callable[[int], str],
        argv_of: Callable[[int], list[str]] | None = None,
    ) -> list[Threat]:
        """A process that had changed uid exited (`status`: its wait status; `argv_of`: its
        arguments, to tell whom su was asked to become)."""
        self.creds.pop(pid, None)
        attempt = self.su.pop(pid, None)
        if attempt is None or attempt.switched or status == 0:
            return []
        raw = command(pid) or "su"
        line = clean(raw, EVIDENCE_LINE)
        code = status >> 8 if status & 0x7F == 0 else -(status & 0x7F)
        # to root (the default) it is an escalation attempt; to another user (`su - code`
        # by code itself, `su postgres`) it is not one: a WARNING
        argv = argv_of(pid) if argv_of is not None else raw.split()
        level = "high" if su_target(argv) in ("root", "0") else "warning"
        return [
            Threat(
                "priv.su-failed",
                level,
                "auth",
                "su by a non-root user failed",
                f"uid {attempt.uid}: {line} "
                f"ended ({'exit ' + str(code) if code >= 0 else 'signal ' + str(-code)}) "
                "without switching user",
                {
                    "auth": {
                        "log_file": "",
                        "line": line,
                        "pattern": "su failed",
                    },
                    "process": {"pid": pid, "uid": attempt.uid, "exit": code},
                },
                dedup_key=f"priv.su-failed:{pid}",
            )
        ]

    def read_logs(self) -> list[Threat]:
        """New lines of the auth logs (one bounded chunk per file)."""
        found: list[Threat] = []
        try:
            with container_root(self.init_pid) as root:
                log_dir = open_path(root, LOG_DIR)
        except OSError:
            return found
        try:
            for name in AUTH_LOGS:
                tail, lines = read_new(log_dir, name, self.tails.get(name), self.since)
                self.tails[name] = tail
                if not lines:
                    continue
                sudo_lines = name == AUTH_LOGS[0] or self.tails.get(AUTH_LOGS[0]) is None
                for line in lines:
                    threat = judge_line(line, f"/{LOG_DIR}/{name}", sudo_lines)
                    if threat is not None:
                        found.append(threat)
        finally:
            os.close(log_dir)
        return found
