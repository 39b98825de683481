"""Sensitive-file watcher: fanotify from the host on chosen files and directories of each
watched container, so opens and writes are seen, not only execs (a python one-liner that
appends to ~/.bashrc starts no process the exec rules could judge).

One fanotify group per container (closing it drops every mark), reporting the parent
directory and name of each event (FAN_REPORT_DFID_NAME: no file descriptor is opened for us,
and the directory's handle tells which container and path it was). Marks are inode marks:
- reads: FAN_OPEN on each existing credential file (/etc/shadow, SSH private keys, cloud
  credentials, keyrings, the session's canaries), re-marked when one is replaced;
- writes: FAN_CLOSE_WRITE, FAN_CREATE and FAN_MOVED_TO on the children of the directories
  that hold persistence and account files (/etc, /etc/sudoers.d, crontabs, shell start-up
  files, systemd units, ~/.ssh), so `sed -i` (a new file renamed over the old) is seen too.
A directory that does not exist yet is awaited through its nearest existing ancestor, and
what was already written in it when it appears is judged then.

The container's tree is hostile: every path is walked from the container's root one
component at a time with O_NOFOLLOW (an absolute symlink must never lead to the host's
files), and file contents are read only from regular files, bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

# fanotify(7) and fcntl.h
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_REPORT_FID = 0x200
FAN_REPORT_DFID_NAME = 0xC00
FAN_MODIFY = 0x02
FAN_CLOSE_WRITE = 0x08
FAN_OPEN = 0x20
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_Q_OVERFLOW = 0x4000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
FAN_MARK_ADD = 0x1
FAN_MARK_DONT_FOLLOW = 0x4
INFO_FID = 1
INFO_DFID_NAME = 2
AT_EMPTY_PATH = 0x1000
O_PATH = getattr(os, "O_PATH", 0o10000000)

ENTRY_EVENTS = FAN_CREATE | FAN_MOVED_TO  # a name appears in a directory
# MODIFY too: a writer that keeps its descriptor open is seen at its first write, not at a
# close that may never come (the kernel merges a run of them on one file)
WRITE_EVENTS = FAN_MODIFY | FAN_CLOSE_WRITE | ENTRY_EVENTS
MAX_CONTENT = 64 * 1024  # bytes of a written start-up file or crontab judged by the rules
MAX_DIR_ENTRIES = 4096  # entries looked at in one directory (a hostile one may hold millions)
READS_PER_TURN = 16  # reads of the group per call: a flood waits its turn behind other sources
MAX_DIRS = 512  # directory descriptors held per container (a loop re-creating one must not
# exhaust the daemon's descriptors)
MAX_MARKS = 4096  # file marks per container (the host's fanotify mark limit is shared)
MAX_NEW_HOMES = 64  # homes made after the watch began that are watched too
EVENT_HEADER = struct.Struct("IBBHQii")


@dataclass(frozen=True)
class Sensitive:
    """Files in one directory that matter. `dir`: a container path, "~" standing for each
    home (/root and /home/*); `names`: fnmatch patterns; `access`: "read" (any open) or
    "write" (written, created, renamed into place)."""

    dir: str
    names: tuple[str, ...]
    access: str
    rule: str
    level: str
    category: str
    title: str
    skip: tuple[str, ...] = ()
    judge_content: bool = False  # also run the script rules over what was written
    package_managed: bool = False  # dpkg/apt write these too (INFO while they do)


STARTUP_FILES = (
    ".bashrc",
    ".bash_aliases",  # sourced by Debian's .bashrc
    ".profile",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".zshrc",
    ".zprofile",
    ".zshenv",
    ".zlogin",
    ".pam_environment",
)
CLOUD_CREDENTIALS = (
    ("~/.aws", ("credentials",)),
    (
        "~/.config/gcloud",
        ("credentials.db", "access_tokens.db", "application_default_credentials.json"),
    ),
    ("~/.azure", ("accessTokens.json", "msal_token_cache.json", "msal_token_cache.bin")),
    ("~/.kube", ("config",)),
    ("~/.docker", ("config.json",)),
    ("~/.config/gh", ("hosts.yml",)),
    ("~", (".netrc", ".git-credentials", ".pgpass")),
)
KEYRINGS = (
    ("~/.local/share/keyrings", ("*",)),
    ("~/.mozilla/firefox/*", ("logins.json", "key4.db", "cookies.sqlite")),
    ("~/.config/google-chrome/*", ("Login Data", "Cookies")),
    ("~/.config/chromium/*", ("Login Data", "Cookies")),
)

# The one list of what the watcher watches (SECURITY.md "Sensitive files" names it).
SENSITIVE: tuple[Sensitive, ...] = (
    Sensitive(
        "/etc",
        ("shadow", "gshadow", "shadow-", "gshadow-"),  # and their backups: the same hashes
        "read",
        "file.shadow-read",
        "high",
        "credential_access",
        "Password hashes read",
    ),
    Sensitive(
        "~/.ssh",
        ("id_*", "*.pem", "*_key", "*.key"),
        "read",
        "file.ssh-key-read",
        "high",
        "credential_access",
        "SSH private key read",
        skip=("*.pub",),
    ),
    *(
        Sensitive(
            folder,
            names,
            "read",
            "file.credential-read",
            "high",
            "credential_access",
            "Cloud or tool credential file read",
        )
        for folder, names in CLOUD_CREDENTIALS
    ),
    *(
        Sensitive(
            folder,
            names,
            "read",
            "file.keyring-read",
            "high",
            "credential_access",
            "Browser or keyring secret store read",
        )
        for folder, names in KEYRINGS
    ),
    Sensitive(
        "/etc",
        ("sudoers",),
        "write",
        "file.sudoers-write",
        "critical",
        "privilege",
        "sudoers changed",
        package_managed=True,
    ),
    Sensitive(
        "/etc/sudoers.d",
        ("*",),
        "write",
        "file.sudoers-write",
        "critical",
        "privilege",
        "sudoers changed",
        package_managed=True,
    ),
    Sensitive(
        "/etc",
        ("shadow", "gshadow", "passwd", "group"),
        "write",
        "file.account-write",
        "critical",
        "persistence",
        "Account database changed",
        package_managed=True,
    ),
    Sensitive(
        "~/.ssh",
        ("authorized_keys", "authorized_keys2"),
        "write",
        "file.authorized-keys-write",
        "critical",
        "persistence",
        "SSH authorized_keys changed",
    ),
    Sensitive(
        "~/.ssh",
        ("rc", "environment"),
        "write",
        "file.ssh-rc-write",
        "high",
        "persistence",
        "SSH login script changed",
        judge_content=True,
    ),
    Sensitive(
        "/etc",
        ("ld.so.preload",),
        "write",
        "file.ld-preload-write",
        "critical",
        "persistence",
        "ld.so.preload changed: every program would load a library",
    ),
    Sensitive(
        "/etc/ld.so.conf.d",
        ("*",),
        "write",
        "file.ld-conf-write",
        "high",
        "persistence",
        "Dynamic linker search path changed",
        package_managed=True,
    ),
    *(
        Sensitive(
            folder,
            names,
            "write",
            "file.cron-write",
            "high",
            "persistence",
            "Scheduled job added or changed",
            judge_content=True,
            package_managed=True,
        )
        for folder, names in (
            ("/etc", ("crontab", "anacrontab")),
            ("/etc/cron.d", ("*",)),
            ("/etc/cron.hourly", ("*",)),
            ("/etc/cron.daily", ("*",)),
            ("/etc/cron.weekly", ("*",)),
            ("/etc/cron.monthly", ("*",)),
            ("/var/spool/cron/crontabs", ("*",)),
        )
    ),
    Sensitive(
        "~",
        STARTUP_FILES,
        "write",
        "file.startup-write",
        "high",
        "persistence",
        "Shell start-up file changed",
        judge_content=True,
    ),
    *(
        Sensitive(
            folder,
            names,
            "write",
            "file.startup-write",
            "high",
            "persistence",
            "Shell start-up file changed",
            judge_content=True,
            package_managed=True,
        )
        for folder, names in (
            ("/etc", ("profile", "bash.bashrc", "environment", "zshenv", "zshrc")),
            ("/etc/profile.d", ("*",)),
            ("/etc/skel", STARTUP_FILES),  # what every new home gets
            ("/etc/zsh", ("*",)),
        )
    ),
    *(
        Sensitive(
            folder,
            ("*",),
            "write",
            "file.systemd-unit-write",
            "high",
            "persistence",
            "systemd unit added or changed",
            judge_content=True,
            package_managed=True,
        )
        for folder in (
            "/etc/systemd/system",
            "/etc/systemd/system/multi-user.target.wants",
            "/etc/systemd/system/default.target.wants",
            "/etc/systemd/user",
            "/usr/lib/systemd/system",
            "~/.config/systemd/user",
            "~/.config/systemd/user/default.target.wants",
        )
    ),
    Sensitive(
        "/etc/pam.d",
        ("*",),
        "write",
        "file.pam-write",
        "high",
        "persistence",
        "PAM configuration changed",
        package_managed=True,
    ),
)

# Programs whose opens of these files are their job: known by their exact path in the
# container AND the file found there when the watch began (device, inode: a copy of python
# at /usr/lib/x/su, or one put over /usr/bin/su later, is not su). See Opener.runs.
AUTH_TOOLS = frozenset(
    {
        "sudo",
        "su",
        "runuser",
        "unix_chkpwd",
        "systemd",  # a user's systemd manager opening its PAM session (su, login)
        "sshd-session",
        "login",
        "sshd",
        "passwd",
        "chage",
        "chpasswd",
        "chsh",
        "chfn",
        "newgrp",
        "gpasswd",
        "cron",
        "pwck",
        "grpck",
        "pwconv",
        "grpconv",
        "useradd",
        "usermod",
        "userdel",
        "groupadd",
        "groupmod",
        "groupdel",
        "newusers",
        "expiry",
    }
)
ACCOUNT_TOOLS = frozenset(
    {
        "useradd",
        "usermod",
        "userdel",
        "groupadd",
        "groupmod",
        "groupdel",
        "passwd",
        "chpasswd",
        "chsh",
        "chfn",
        "gpasswd",
        "newusers",
        "pwconv",
        "grpconv",
        "chage",
    }
)
# not scp/sftp (their -S/-D program receives the file) nor ssh-add (to whatever agent socket)
SSH_TOOLS = frozenset({"ssh", "ssh-keygen"})
PACKAGE_MANAGERS = frozenset({"dpkg", "apt", "apt-get", "aptitude"})
SEARCH_TOOLS = frozenset({"grep", "egrep", "fgrep", "rg", "find"})
TOOL_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")
# debconf's scripts (apt runs dpkg-preconfigure on every install): perl as root reads shadow
# whenever it looks a user up
DEBCONF_SCRIPTS = (
    "/usr/sbin/dpkg-preconfigure",
    "/usr/sbin/dpkg-reconfigure",
    "/usr/sbin/adduser",
    "/usr/sbin/deluser",
    "/usr/sbin/addgroup",
    "/usr/share/debconf/frontend",
)
PERL = "/usr/bin/perl"
PERL_INJECTION = (b"PERL5OPT=", b"PERL5LIB=", b"PERLLIB=", b"PERL5DB=", b"PERL_HASH_SEED_DEBUG=")
# a credential file read by its own program (every `gh` call reads hosts.yml)
OWNERS = {
    "hosts.yml": "/usr/bin/gh",
    "config.json": "/usr/bin/docker",
    "config": "/usr/bin/kubectl",
}
GIT = "/usr/lib/git-core/git"
GIT_REMOTES = ("/usr/lib/git-core/git-remote-http", "/usr/lib/git-core/git-remote-https")
TOOL_PATHS = (
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    PERL,
    *DEBCONF_SCRIPTS,
    *OWNERS.values(),
    GIT,
    *GIT_REMOTES,
)
PACKAGED_UNITS = ("/usr/lib/systemd/system/", "/lib/systemd/system/")
# a line an installer appends to a start-up file (rustup, uv, pyenv): a plain setting, an
# alias or sourcing a file in the home; nothing that runs a command, hooks the shell or
# puts a world-writable folder ahead in PATH (then HIGH, as any other change)
_PLAIN = r"""[^\s"'`$\\;&|<>()]"""  # a character of an unquoted value that runs nothing
_VAR = r"\$\{?[A-Za-z_]+\}?"  # a variable in it ($HOME, ${PATH})
_VALUE = (
    rf'(?:"(?:{_PLAIN}|[ \'])*(?:{_VAR}(?:{_PLAIN}|[ \'])*)*"'
    rf"|'[^']*'|{_PLAIN}*(?:{_VAR}{_PLAIN}*)*)"
)
_HOOKS = (
    r"(?:LD_[A-Z_]+|PROMPT_COMMAND|BASH_ENV|ENV|PS[0-4]|PERL5OPT|PERL5LIB|PYTHONSTARTUP"
    r"|NODE_OPTIONS|IFS|SHELLOPTS|BASHOPTS)"
)
_SHADOWED = r"(?:sudo|su|ssh|git|cd|ls|cat|echo|exit|command|builtin)"
BENIGN_LINE = re.compile(
    rf"#.*|(?:export\s+)?(?!{_HOOKS}=)[A-Za-z_][A-Za-z0-9_]*={_VALUE}"
    rf"""|alias\s+(?!{_SHADOWED}=)[A-Za-z0-9_.-]+=(?:'[^'`$;&|<>]*'|"[^"`$;&|<>]*")"""
    r"""|(?:source|\.)\s+"?(?:\$HOME|\$\{HOME\}|~)/[A-Za-z0-9_./-]+"?"""
)
# a PATH that puts a world-writable or relative folder ahead (a hijack of sudo, git...)
UNSAFE_PATH = re.compile(r"""^(?:export\s+)?PATH=["']?(?:/tmp|/var/tmp|/dev/shm|\.|[^/$~"'])""")
ALL_TOOLS = AUTH_TOOLS | ACCOUNT_TOOLS | SSH_TOOLS | PACKAGE_MANAGERS | SEARCH_TOOLS
# files only dpkg itself may write without a verdict (not what a package's scripts run: an
# apt hook or a maintainer script is any program the agent chose)
DPKG_ONLY = frozenset({"file.sudoers-write", "file.account-write"})
Identity = tuple[int, int]  # (st_dev, st_ino)


def tool_paths() -> list[str]:
    """Every path a tool of ALL_TOOLS may run from."""
    return [f"{d}/{t}" for d in TOOL_DIRS for t in sorted(ALL_TOOLS)] + list(TOOL_PATHS)


@dataclass(frozen=True)
class FileEvent:
    """One event of a watched container: the file's container path and what happened."""

    path: str
    access: str  # "read" | "write"
    pid: int
    spec: Sensitive


@dataclass
class Opener:
    """The process behind an event, as far as it can still be seen. `alive`: its program
    is known from the kernel (read while it lived, here or by the exec capture); False when
    all that is left is a command line, whose argv[0] the process chose. `genuine`: the
    programs (its own and its ancestors') that are the tool found at that path when the
    watch began (ContainerFiles.genuine)."""

    pid: int
    alive: bool
    exe: str = ""
    argv: list[str] = field(default_factory=list)
    ancestors: list[str] = field(default_factory=list)  # exe paths of its parents
    package_manager: bool = False  # dpkg/apt ran in the container at the time
    genuine: frozenset[str] = frozenset()
    debconf: bool = False  # the genuine perl running a genuine debconf script, no injection

    @property
    def command(self) -> str:
        return " ".join(self.argv)[:300]

    def runs(self, tools: frozenset[str]) -> bool:
        """Whether the process is one of `tools`: its program is the genuine file at that
        tool's path. Without a known program nothing is."""
        return self.alive and _is_tool(self.exe, tools) and self.exe in self.genuine

    def under(self, tools: frozenset[str]) -> bool:
        return self.runs(tools) or any(
            _is_tool(exe, tools) and exe in self.genuine for exe in self.ancestors
        )


def _is_tool(exe: str, tools: frozenset[str]) -> bool:
    folder, name = os.path.split(exe)
    return name in tools and (folder in TOOL_DIRS or exe in TOOL_PATHS)


def system_tool(exe: str, tools: frozenset[str]) -> bool:
    """A program at one of `tools`' paths (by path only: for a quick "is dpkg running")."""
    return _is_tool(exe.removesuffix(" (deleted)"), tools)


def judge(event: FileEvent, opener: Opener, canary: bool) -> tuple[str, str] | None:
    """(level, why) for an event, or None when it is the file's own tools doing their job.
    Canaries have no legitimate reader at all."""
    spec = event.spec
    if spec.access == "read":
        owner = _owner_reads(event.path, opener)
        if owner:
            return "warning", f"{event.path} read by {owner}"
        if opener.runs(SEARCH_TOOLS) and _searching(opener.argv, event.path):
            return "warning", f"{event.path} opened by a recursive search"
    if canary:
        return spec.level, "a decoy credential planted for this session was opened"
    if spec.access == "read":
        if spec.rule == "file.shadow-read" and opener.debconf:
            return "warning", f"{event.path} read by debconf (a package install or removal)"
        sudoedit = os.path.basename(opener.exe) == "sudo" and _sudo_edits_shadow(opener.argv)
        if spec.rule == "file.shadow-read" and opener.runs(AUTH_TOOLS) and not sudoedit:
            return None
        if spec.rule == "file.ssh-key-read" and opener.runs(SSH_TOOLS):
            return None
        return spec.level, f"{event.path} opened"
    if spec.package_managed:
        if spec.rule in DPKG_ONLY:
            if opener.runs(frozenset({"dpkg"})):
                return "info", f"{event.path} written by dpkg"
        elif opener.package_manager or opener.under(PACKAGE_MANAGERS):
            return "info", f"{event.path} written while a package was installed"
    if spec.rule == "file.account-write" and opener.runs(ACCOUNT_TOOLS):
        return "warning", f"{event.path} changed by {os.path.basename(opener.exe)}"
    return spec.level, f"{event.path} written"


def _owner_reads(path: str, opener: Opener) -> str:
    """The genuine program whose own credential file this is, reading it: gh its
    hosts.yml, docker its config.json, git's credential-store answering a remote helper."""
    if not opener.alive or opener.exe not in opener.genuine:
        return ""
    folder, name = os.path.split(path)
    owner = OWNERS.get(name, "")
    expected = {"hosts.yml": "/.config/gh", "config.json": "/.docker", "config": "/.kube"}
    if owner == opener.exe and folder.endswith(expected.get(name, "\0")):
        return os.path.basename(owner)
    remote = opener.ancestors[0] if opener.ancestors else ""
    if (
        name == ".git-credentials"
        and opener.exe == GIT
        and opener.argv[1:3] == ["credential-store", "get"]
        and remote in GIT_REMOTES
        and remote in opener.genuine
    ):
        return "git's credential store (for a remote)"
    return ""


def _searching(argv: list[str], path: str) -> bool:
    """A recursive search that walked into the file (`grep -rn TODO /etc`) rather than a
    command that names it (`grep root /etc/shadow`, `grep -r --include='s?adow' x /etc`)."""
    if not argv:
        return False
    name = os.path.basename(path)
    for arg in argv[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if name in value or (any(c in value for c in "*?[") and fnmatch.fnmatch(name, value)):
            return False
    return os.path.basename(argv[0]) in ("rg", "find") or any(
        arg in ("--recursive", "--dereference-recursive")
        or (arg.startswith("-") and not arg.startswith("--") and ("r" in arg or "R" in arg))
        for arg in argv[1:]
    )


# sudo's options that take a value (as a separate argument or glued to the letter)
SUDO_VALUE_OPTIONS = frozenset("CDghprTUu")
SUDO_VALUE_LONG = ("--chdir", "--close-from", "--group", "--host", "--prompt", "--chroot",
                   "--role", "--type", "--command-timeout", "--other-user", "--user")  # fmt: skip


def _sudo_edits_shadow(argv: list[str]) -> bool:
    """Whether this sudo is sudoedit of a shadow file (it copies the file as root for the
    agent's editor): its read of /etc/shadow is then not its own authentication. Options
    parsed as sudo's getopt does (values, glued letters, unambiguous long prefixes)."""
    edit = bool(argv) and os.path.basename(argv[0]) == "sudoedit"
    files: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            files += argv[i + 1 :]
            break
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            if len(option) >= 4 and "--edit".startswith(option):
                edit = True
            elif "=" not in arg and any(
                len(option) >= 4 and long.startswith(option) for long in SUDO_VALUE_LONG
            ):
                i += 1
        elif arg.startswith("-") and len(arg) > 1:
            for at, letter in enumerate(arg[1:], 1):
                if letter == "e":
                    edit = True
                if letter in SUDO_VALUE_OPTIONS:
                    if at == len(arg) - 1:
                        i += 1  # the value is the next argument
                    break
        else:
            files += argv[i:]
            break
        i += 1
    return edit and any("shadow" in os.path.basename(f) for f in files)


# ------------------------------------------------------------------------------ fanotify
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.name_to_handle_at.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def handle_of(fd: int, name: str = "") -> bytes:
    """The file handle (type and bytes, as fanotify reports it) of an open file, or of
    `name` in that directory (a symlink there is not followed)."""
    buffer = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("Ii", buffer, 0, 128, 0)
    mount_id = ctypes.c_int()
    path = name.encode("utf-8", "surrogateescape")
    flags = 0 if name else AT_EMPTY_PATH
    _check(
        _libc.name_to_handle_at(fd, path, buffer, ctypes.byref(mount_id), flags),
        "name_to_handle_at",
    )
    size, kind = struct.unpack_from("Ii", buffer, 0)
    return struct.pack("i", kind) + buffer.raw[8 : 8 + size]


def parse_events(data: bytes) -> Iterable[tuple[int, int, bytes, str, bytes]]:
    """(mask, pid, directory handle, name, the object's own handle) of each event in a
    read of the group."""
    offset = 0
    while offset + EVENT_HEADER.size <= len(data):
        length, _version, _reserved, meta_len, mask, _fd, pid = EVENT_HEADER.unpack_from(
            data, offset
        )
        if length < EVENT_HEADER.size:
            return
        info, handle, name, own = offset + meta_len, b"", "", b""
        end = offset + length
        while info + 4 <= end:
            kind, _pad, size = struct.unpack_from("BBH", data, info)
            if size < 4:
                break
            if kind in (INFO_DFID_NAME, INFO_FID) and size >= 20:
                body = data[info + 4 : info + size]
                hsize, htype = struct.unpack_from("Ii", body, 8)
                found = struct.pack("i", htype) + body[16 : 16 + hsize]
                if kind == INFO_FID:
                    own = found
                else:
                    handle = found
                    rest = body[16 + hsize :].split(b"\0", 1)[0]
                    name = rest.decode("utf-8", "surrogateescape")
            info += size
        yield mask, pid, handle, name, own
        offset = end


@dataclass
class Watched:
    path: str
    fd: int  # O_PATH descriptor of the directory (reads and new marks go through it)


class ContainerFiles:
    """The marks of one container: open with `open(root_pid, extra)`, `fileno()` for
    select, `events()` when readable, `close()` when the container is forgotten."""

    def __init__(
        self, root_pid: int, canaries: Iterable[str] = (), own: Iterable[str] = ()
    ) -> None:
        """`own`: files the session was given on purpose (not read-watched)."""
        self.root = os.open(f"/proc/{root_pid}/root", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.group = -1
        try:
            self.group = _check(
                _libc.fanotify_init(
                    # the object's own handle too: a file opened through a hard link or a
                    # bind mount elsewhere is still the marked file
                    FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME | FAN_REPORT_FID,
                    os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC,
                ),
                "fanotify_init",
            )
            self.root_dev = os.fstat(self.root).st_dev
            self.canaries = frozenset(canaries)
            self.own = frozenset(own) - self.canaries
            self.specs = self._expand(canaries)
            self.dirs: dict[bytes, Watched] = {}
            self.by_path: dict[str, Watched] = {}
            self.files: dict[bytes, tuple[str, str]] = {}  # marked file -> (folder, name)
            self.snapshots: dict[str, str] = {}  # start-up file -> its text when last seen
            self.last_change: dict[str, str] = {}  # ... and how it had changed then
            self.awaited: dict[str, set[str]] = {}  # existing ancestor -> targets below it
            self.overflowed = 0
            self.marked_files = 0
            self.tools = self._tool_identities()
            self.new_homes = 0
            self.pending: list[FileEvent] = []
            for folder in {spec.dir for spec in self.specs}:
                self._ensure(folder, initial=True)
        except BaseException:
            self.close()
            raise

    def _tool_identities(self) -> dict[str, Identity]:
        """The exempt tools' files as the watch begins (a later replacement is not them)."""
        found: dict[str, Identity] = {}
        by_dir: dict[str, list[str]] = {}
        for path in tool_paths():
            by_dir.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
        for folder, names in by_dir.items():
            try:
                fd = self._open_dir(folder)  # /bin and /sbin: links on merged-/usr images
            except OSError:
                continue
            try:
                for name in names:
                    with contextlib.suppress(OSError):
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISREG(info.st_mode):
                            found[f"{folder}/{name}"] = (info.st_dev, info.st_ino)
            finally:
                os.close(fd)
        return found

    def identity_now(self, path: str) -> Identity | None:
        """The file at a container path now (no link followed anywhere on the way)."""
        folder, name = os.path.split(path)
        try:
            fd = self._open_dir(folder)
        except OSError:
            return None
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)
        return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None

    def link_target(self, path: str) -> str:
        """Where a symlink at a container path points ("" when it is none)."""
        folder, name = os.path.split(path)
        try:
            fd = self._open_dir(folder)
        except OSError:
            return ""
        try:
            return os.readlink(name, dir_fd=fd)
        except OSError:
            return ""
        finally:
            os.close(fd)

    def startup_change(self, path: str) -> str:
        """How a shell start-up file changed since it was last seen: "skel" (it is now the
        copy of /etc/skel's, as useradd -m makes it), "settings" (lines only appended, each
        a plain setting: what installers add, see BENIGN_LINE), or "" (anything else)."""
        text = self.read(path)
        old = self.snapshots.get(path)
        if old is not None and text == old:  # the same write seen again (MODIFY, then CLOSE)
            return self.last_change.get(path, "")
        self.snapshots[path] = text
        self.last_change[path] = change = self._startup_change(path, text, old)
        return change

    def _startup_change(self, path: str, text: str, old: str | None) -> str:
        name = os.path.basename(path)
        if (
            path.startswith(("/home/", "/root/"))
            and text
            and text == self.read(f"/etc/skel/{name}")
        ):
            return "skel"
        if old is None or not text.startswith(old):
            return ""
        added = [line.strip() for line in text[len(old) :].splitlines()]
        if added and all(
            not line or (BENIGN_LINE.fullmatch(line) and not UNSAFE_PATH.match(line))
            for line in added
        ):
            return "settings"
        return ""

    def genuine(self, programs: Iterable[tuple[str, Identity | None]]) -> frozenset[str]:
        """Which of (path, identity) are the very tool files found when the watch began."""
        return frozenset(
            path for path, ident in programs if ident is not None and self.tools.get(path) == ident
        )

    # -------------------------------------------------------------- what is watched
    def _homes(self) -> list[str]:
        homes = ["/root"]
        with contextlib.suppress(OSError):
            fd = self._open_dir("/home")
            try:
                homes += [f"/home/{name}" for name in sorted(os.listdir(_listable(fd)))[:64]]
            finally:
                os.close(fd)
        return homes

    def _expand(self, canaries: Iterable[str], homes: list[str] | None = None) -> list[Sensitive]:
        """SENSITIVE with "~" and globbed directories made concrete, plus the canaries
        (`homes`: only the "~" entries, for these homes)."""
        only_homes = homes is not None
        homes = self._homes() if homes is None else homes
        out: list[Sensitive] = []
        for spec in SENSITIVE:
            if spec.dir.startswith("~"):
                folders = [spec.dir.replace("~", home, 1) for home in homes]
            else:
                folders = [] if only_homes else [spec.dir]
            for folder in folders:
                for concrete in self._glob(folder):
                    out.append(_replace(spec, dir=concrete))
        for path in canaries:
            folder, name = os.path.split(path)
            out.append(
                Sensitive(
                    folder,
                    (name,),
                    "read",
                    "canary.open",
                    "high",
                    "canary",
                    "Decoy credential opened",
                )
            )
        return out

    def _glob(self, folder: str) -> list[str]:
        if "*" not in folder:
            return [folder]
        head, _, tail = folder.partition("*")
        parent = head.rstrip("/") or "/"
        try:
            fd = self._open_dir(parent)
        except OSError:
            return []
        try:
            names = sorted(os.listdir(_listable(fd)))[:MAX_DIR_ENTRIES]
        finally:
            os.close(fd)
        return [f"{parent}/{name}{tail}" for name in names if "*" not in tail][:16]

    # ------------------------------------------------------------------ container tree
    def _open_dir(self, path: str) -> int:
        """An O_PATH descriptor of a container directory, never through a symlink."""
        fd = os.dup(self.root)
        try:
            for part in [p for p in path.split("/") if p]:
                child = os.open(
                    part, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _mark(self, dir_fd: int, mask: int, name: str = ".") -> None:
        """Mark `name` in a directory (itself by default); a symlink there is marked as
        itself, never followed (fanotify takes no O_PATH descriptor alone)."""
        flags = FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW
        path = name.encode("utf-8", "surrogateescape")
        _check(_libc.fanotify_mark(self.group, flags, mask, dir_fd, path), "fanotify_mark")

    def _dir_mask(self, folder: str) -> int:
        mask = 0
        for spec in self.specs:
            if spec.dir == folder:
                mask |= (
                    WRITE_EVENTS | FAN_EVENT_ON_CHILD if spec.access == "write" else ENTRY_EVENTS
                )
        return mask

    def _ensure(self, folder: str, initial: bool = False) -> None:
        """Mark `folder` (and the files to read-watch in it); if it does not exist, await
        it through its nearest existing ancestor."""
        if folder in self.by_path:
            return
        parts = [p for p in folder.split("/") if p]
        for depth in range(len(parts), -1, -1):
            path = "/" + "/".join(parts[:depth])
            try:
                fd = self._open_dir(path)
            except OSError:
                continue
            if depth == len(parts):
                self._adopt(folder, fd, initial)
            else:
                os.close(fd)
                self.awaited.setdefault(path, set()).add(folder)
            # every existing ancestor tells when a name appears in it: a folder on the way
            # made, replaced (`mv /usr/lib/systemd x; mkdir ...`) or made a link
            for up in range(min(depth, len(parts) - 1), -1, -1):
                self._mark_ancestor("/" + "/".join(parts[:up]))
            return

    def _mark_ancestor(self, path: str) -> None:
        try:
            fd = self._open_dir(path)
        except OSError:
            return
        try:
            self._mark(fd, ENTRY_EVENTS | FAN_ONDIR)
            key = handle_of(fd)
            if key not in self.dirs:
                self.dirs[key] = Watched(path, -1)  # events only: no descriptor kept
        except OSError:
            self.overflowed += 1  # a mark refused (the host's limit): reported as lost
        finally:
            os.close(fd)

    def _adopt(self, folder: str, fd: int, initial: bool) -> None:
        try:
            self._mark(fd, self._dir_mask(folder) | FAN_ONDIR)
            key = handle_of(fd)
        except OSError:
            os.close(fd)
            return
        old = self.dirs.get(key)
        if old is not None and old.fd >= 0 and old.fd != fd:
            os.close(old.fd)
            old.fd = -1  # never closed twice (another record may hold the same object)
        watched = Watched(folder, fd)
        self.dirs[key] = watched
        self.by_path[folder] = watched
        try:
            names = sorted(os.listdir(_listable(fd)))[:MAX_DIR_ENTRIES]
        except OSError:
            names = []
        for name in names:
            specs = self._specs_for(folder, name)
            if specs:
                self._mark_file(watched, name)
            if any(spec.rule == "file.startup-write" for spec in specs) and initial:
                self.snapshots[f"{folder}/{name}"] = self.read(f"{folder}/{name}")
            for spec in specs:
                if spec.access == "write" and not initial:
                    # written before the directory was marked (it appeared just now)
                    self.pending.append(FileEvent(f"{folder}/{name}", "write", 0, spec))

    def _mark_file(self, folder: Watched, name: str) -> None:
        """Mark the file itself (opens for a read-watched one, writes for a write-watched
        one), so it is recognised by its handle whatever path it is reached by."""
        mask = 0
        for spec in self._specs_for(folder.path, name):
            mask |= FAN_OPEN if spec.access == "read" else FAN_MODIFY | FAN_CLOSE_WRITE
        if not mask or folder.fd < 0:
            return
        if self.marked_files >= MAX_MARKS:
            self.overflowed += 1  # a flood of files to mark: reported as lost events
            return
        try:
            info = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                return
            # a read-watched file of another filesystem is a user's mounted credential: the
            # user's choice, not judged here
            canary = f"{folder.path}/{name}" in self.canaries
            mine = f"{folder.path}/{name}" in self.own
            if mask & FAN_OPEN and not canary and (mine or info.st_dev != self.root_dev):
                mask &= ~FAN_OPEN
                if not mask:
                    return
            self._mark(folder.fd, mask, name)
            self.files[handle_of(folder.fd, name)] = (folder.path, name)
            self.marked_files += 1
        except FileNotFoundError:
            pass  # gone again
        except OSError:
            self.overflowed += 1  # a mark refused: reported as lost events

    def _specs_for(self, folder: str, name: str) -> list[Sensitive]:
        return [
            spec
            for spec in self.specs
            if spec.dir == folder
            and any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.names)
            and not any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.skip)
        ]

    # ---------------------------------------------------------------------- events
    def fileno(self) -> int:
        return self.group

    def events(self) -> list[FileEvent]:
        """Everything the group has, judged against the specs (and new directories or
        replaced files marked on the way)."""
        out, self.pending = self.pending, []
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(self.group, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
            for mask, pid, handle, name, own in parse_events(data):
                if mask & FAN_Q_OVERFLOW:
                    self.overflowed += 1
                    continue
                if own in self.files:  # a marked file, by whatever path it was reached
                    where, name = self.files[own]
                    folder = self.by_path.get(where) or Watched(where, -1)
                else:
                    folder = self.dirs.get(handle)
                if folder is None or not name:
                    continue
                path = f"{folder.path.rstrip('/')}/{name}"
                if mask & ENTRY_EVENTS and own not in self.files:
                    self._appeared(folder, name, path, bool(mask & FAN_ONDIR), pid)
                    out += self.pending
                    self.pending = []
                access = "read" if mask & FAN_OPEN and not mask & WRITE_EVENTS else "write"
                if mask & FAN_ONDIR:
                    continue
                specs = self._specs_for(folder.path, name)
                out += [FileEvent(path, access, pid, s) for s in specs if s.access == access]
        return out

    def is_canary(self, event: FileEvent) -> bool:
        """At a canary's path (whether one was planted there is the registry's to say)."""
        return event.path in self.canaries

    def _appeared(self, folder: Watched, name: str, path: str, is_dir: bool, pid: int) -> None:
        """A name created or moved into a watched directory: a directory on the way to a
        watched one (awaited, or put in place of one already marked: `mv ~/.ssh x; mkdir
        ~/.ssh`) is marked now; a file to watch gets its own mark."""
        if is_dir and folder.path == "/home" and self.new_homes < MAX_NEW_HOMES:
            # a user made after the watch began (useradd -m): their home is watched too
            self.new_homes += 1
            self.specs += self._expand((), homes=[path])
        if is_dir:
            waiting = self.awaited.get(folder.path, set())
            for target in sorted({spec.dir for spec in self.specs}):
                if target != path and not target.startswith(path + "/"):
                    continue
                waiting.discard(target)
                replaced = self.by_path.pop(target, None)
                if replaced is not None and replaced.fd >= 0:
                    os.close(replaced.fd)  # its marks stay on the old directory
                    replaced.fd = -1
                if sum(1 for w in self.dirs.values() if w.fd >= 0) >= MAX_DIRS:
                    self.overflowed += 1  # reported like lost events
                    continue
                self._ensure(target)
            return
        if any(t == path or t.startswith(path + "/") for t in {spec.dir for spec in self.specs}):
            # a link or a file put where a watched folder goes: what is written "in" it
            # from now on lands where the agent chose
            target = path in {spec.dir for spec in self.specs}
            spec = Sensitive(
                folder.path,
                (name,),
                "write",
                "file.watched-folder-replaced",
                "high" if target else "warning",
                "persistence",
                "A watched folder was replaced by a link or a file",
            )
            self.pending.append(FileEvent(path, "write", pid, spec))
            return
        self._mark_file(folder, name)

    def read(self, path: str) -> str:
        """The start of a container file (regular files only; "" otherwise)."""
        folder, name = os.path.split(path)
        try:
            dir_fd = self._open_dir(folder)
        except OSError:
            return ""
        try:
            # O_PATH first: a device or a FIFO is never opened, a tty never becomes ours
            handle = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return ""
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return ""
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            fd = os.open(f"/proc/self/fd/{handle}", flags)
        except OSError:
            return ""
        finally:
            os.close(handle)
        try:
            return os.read(fd, MAX_CONTENT).decode("utf-8", "replace")
        except OSError:
            return ""
        finally:
            os.close(fd)

    def close(self) -> None:
        for watched in getattr(self, "dirs", {}).values():
            with contextlib.suppress(OSError):
                os.close(watched.fd)
        self.dirs = {}
        self.by_path = {}
        for fd in (self.group, self.root):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.group = self.root = -1


def _listable(fd: int) -> str:
    """listdir cannot take an O_PATH descriptor: list through /proc/self/fd."""
    return f"/proc/self/fd/{fd}"


def _replace(spec: Sensitive, **changes: str) -> Sensitive:
    return replace(spec, **changes)


OpenerLookup = Callable[[int], Opener]
