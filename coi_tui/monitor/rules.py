"""Detectors that need no I/O: command lines, packets and counters in, Threats out.

Every rule has a stable id (`<area>.<name>`); the behavioural reverse-shell rules, which
need the process graph, live in behaviour.py.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import struct
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from coi_tui.monitor.config import MonitorConfig
from coi_tui.monitor.events import Threat

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "tcsh", "csh"}
INTERPRETERS = {
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "node",
    "nodejs",
    "lua",
    "awk",
    "gawk",
    "mawk",
    "tclsh",
    "irb",
    "bun",
    "deno",
    "java",
    "pwsh",
    "rscript",
    "julia",
}
NETCATS = {"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd", "busybox"}
SEARCHERS = {"grep", "egrep", "fgrep", "rg", "ag", "ack", "git", "find", "sed", "awk"}
READERS = {
    "cat",
    "less",
    "more",
    "head",
    "tail",
    "strings",
    "xxd",
    "hexdump",
    "od",
    "base64",
    "cp",
    "tar",
    "zip",
    "scp",
    "rsync",
    "curl",
    "wget",
    "nl",
    "vi",
    "vim",
    "nano",
}
DIR_SCANNERS = {"ls", "find", "tar", "zip", "cp", "scp", "rsync", "cat", "du", "tree", "stat"}
SSH_TOOLS = {"ssh", "sshd", "scp", "sftp", "ssh-agent", "ssh-add", "ssh-keygen", "ssh-keyscan"}
CLOUD_FILES = (
    ".aws/credentials",
    ".aws/config",
    ".config/gcloud/",
    ".azure/",
    ".docker/config.json",
    ".kube/config",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    "/etc/shadow",
    ".bash_history",
    ".gnupg/",
)
SECRET_PATTERNS = re.compile(
    r"begin (rsa |dsa |ec |openssh )?private|aws_access_key_id|aws_secret_access_key|"
    r"aws_session_token|secretaccesskey|accesskeyid|id_rsa|id_ed25519|id_ecdsa|id_dsa|"
    r"akia\[|akia\w{4}|\*\.(pem|p12|pfx|kdbx|ppk)\b|wallet\.dat|\.git-credentials",
    re.IGNORECASE,
)
BROAD_SECRET_WORDS = re.compile(r"password|passwd|secret|api[_-]?key|token|credential", re.I)
LOCAL_NAMES = ("localhost", "127.", "0.0.0.0", "::1", "[::1]")
PRIVATE = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "198.18.0.0/15",
        "fc00::/7",
        "fe80::/10",
    )
]


def base(path: str) -> str:
    return os.path.basename(path or "")


def is_shell(name: str) -> bool:
    return name in SHELLS


def is_interpreter(name: str) -> bool:
    stripped = re.sub(r"[\d.]+$", "", name)
    return name in INTERPRETERS or stripped in INTERPRETERS


def threat(
    rule: str,
    level: str,
    category: str,
    title: str,
    description: str,
    evidence: dict[str, Any],
    key: str,
) -> Threat:
    return Threat(rule, level, category, title, description, evidence, dedup_key=f"{rule}:{key}")


# --------------------------------------------------------------------------- command lines
def _inline_code(argv: list[str], flags: tuple[str, ...]) -> str:
    for i, arg in enumerate(argv[1:], 1):
        if arg in flags and i + 1 < len(argv):
            return argv[i + 1]
        for flag in flags:
            if arg.startswith(flag) and len(arg) > len(flag) and not arg.startswith("--"):
                return arg[len(flag) :]
    return ""


def _inline_codes(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Every inline program (ruby -rsocket -e CODE has two flags, the second one matters)."""
    codes = []
    for i, arg in enumerate(argv[1:], 1):
        if arg in flags and i + 1 < len(argv):
            codes.append(argv[i + 1])
            continue
        for flag in flags:
            if arg.startswith(flag) and len(arg) > len(flag) and not arg.startswith("--"):
                codes.append(arg[len(flag) :])
    return codes


def _remote_target(text: str) -> bool:
    """/dev/tcp/HOST/PORT with HOST not local."""
    for match in re.finditer(r"/dev/(tcp|udp)/([^/\s]+)/", text):
        if not match.group(2).startswith(LOCAL_NAMES):
            return True
    return False


def cmdline_threats(pid: int, argv: list[str], exe: str) -> list[Threat]:
    """Rules on one exec: the complement of the behavioural reverse-shell check."""
    if not argv:
        return []
    name = base(argv[0])
    exe_name = base(exe)
    command = " ".join(argv)[:300]
    evidence = {"process": {"pid": pid, "command": command}}
    out: list[Threat] = []

    def hit(rule: str, level: str, category: str, title: str, why: str) -> None:
        ev = {"process": {**evidence["process"], "pattern": why}}
        out.append(threat(rule, level, category, title, why, ev, f"{pid}:{command[:80]}"))

    lowered = [a.lower() for a in argv]
    # netcat/socat wiring a program to the network
    attach_flags = ("-e", "-c", "--exec", "--sh-exec", "--lua-exec")
    if (name in NETCATS or exe_name in NETCATS) and any(a in attach_flags for a in lowered):
        hit(
            "proc.netcat-exec",
            "critical",
            "process",
            "Reverse shell detected",
            f"{name} started with a program attached to the connection",
        )
    socat_exec = any(a.startswith(("exec:", "system:")) or ",exec:" in a for a in lowered)
    if "socat" in (name, exe_name) and socat_exec:
        hit(
            "proc.socat-exec",
            "critical",
            "process",
            "Reverse shell detected",
            "socat connecting a program to a socket",
        )
    script = _inline_code(argv, ("-c",)) if is_shell(name) or is_shell(exe_name) else ""
    if script:
        out.extend(script_threats(pid, script, command))
    if is_interpreter(name) or is_interpreter(exe_name):
        code = "\n".join(_inline_codes(argv, ("-c", "-e", "-r", "-E", "--eval", "-R")))
        if not code and "awk" in (name + exe_name):
            code = next((a for a in argv[1:] if not a.startswith("-")), "")
        if code and interpreter_socket_oneliner(code):
            hit(
                "proc.interpreter-socket",
                "critical",
                "process",
                "Reverse shell detected",
                f"{name} one-liner opening a socket and wiring it to a shell or stdio",
            )
        elif code and interpreter_env_exfil(code):
            hit(
                "exfil.secrets-to-network",
                "high",
                "credential_access",
                "Secrets sent to the network",
                f"{name} one-liner sending the whole environment over the network",
            )
    family, inline = interpreter_code(argv, exe)
    if (
        inline
        and env_dump_code(inline, family)
        and not any(t.rule_id == "exfil.secrets-to-network" for t in out)
    ):
        hit(
            "cred.env-dump",
            "warning",
            "credential_access",
            "Environment variable scanning detected",
            f"{name} one-liner reading the whole environment",
        )
    if name in MINERS or exe_name in MINERS or any(MINER_ARGS.search(a) for a in lowered):
        hit("proc.miner", "critical", "process", "Crypto miner detected", "miner binary or pool")
    if name in SENDERS and _sends_secret_file(name, argv):
        hit(
            "exfil.secrets-to-network",
            "high",
            "credential_access",
            "Secrets sent to the network",
            f"{name} uploading a credential file",
        )
    if name == "crontab" and not any(a in ("-l", "-r", "-e") for a in args_of(argv)):
        hit("persist.cron", "warning", "persistence", "Cron job installed", "crontab loaded")
    out.extend(credential_threats(pid, name, argv, command))
    return out


def args_of(argv: list[str]) -> list[str]:
    return argv[1:]


SENDERS = {
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "socat",
    "telnet",
    "openssl",
    "scp",
    "rsync",
    "sftp",
    "ftp",
    "tftp",
    "busybox",
}
MINERS = {
    "xmrig",
    "minerd",
    "cpuminer",
    "ccminer",
    "ethminer",
    "nbminer",
    "t-rex",
    "lolminer",
    "xmr-stak",
    "nanominer",
    "phoenixminer",
    "cgminer",
    "bfgminer",
}
MINER_ARGS = re.compile(
    r"stratum\+(tcp|ssl|tls)://|--donate-level|cryptonight|randomx|"
    r"--coin[= ](monero|xmr)|pool\.(minexmr|supportxmr|hashvault)"
)
SECRET_FILE = re.compile(
    r"\.ssh/(id_|[^\s/]*+_key\b|authorized_keys)|\.aws/(credentials|config)|\.config/gcloud/|"
    r"\.azure/|\.docker/config\.json|\.kube/config|\.netrc|\.git-credentials|\.pgpass|"
    r"\.npmrc|\.pypirc|/proc/[^/\s]+/environ|/etc/(shadow|passwd)|\.(ssh|aws|gnupg|kube)/?(\s|$)|(^|[\s/=@'\"])\.env(\s|$|['\"])"
)


def _local_host(host: str) -> bool:
    host = host.strip("[]'\"")
    return host.startswith(LOCAL_NAMES) or host in ("", "localhost")


def _remote_hosts(words: list[str]) -> list[str]:
    """Arguments of a network tool naming a non-local host (URLs, IPs, host names)."""
    hosts = []
    for word in words[1:]:
        word = word.strip("'\"")
        url = re.match(r"^[a-z][a-z0-9+.-]*://([^/:@\s]+@)?(\[[^\]]+\]|[^/:\s]+)", word)
        if url:
            host = url.group(2)
        elif re.match(r"^(tcp|udp|tcp4|udp4|openssl|ssl)[:-]", word, re.I):
            host = word.split(":")[1] if word.count(":") >= 1 else ""
        elif re.match(r"^\d{1,3}(\.\d{1,3}){3}(:\d+)?$", word):
            host = word.split(":")[0]
        elif re.match(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+(:\d+)?(/\S*)?$", word) and not (
            "/" in word.split(":")[0] or re.search(r"\.(txt|json|sh|py|log|tgz|gz|tar|zip)$", word)
        ):
            host = word.split(":")[0].split("/")[0]
        else:
            continue
        if host and not _local_host(host):
            hosts.append(host)
    return hosts


def _sends_secret_file(name: str, argv: list[str]) -> bool:
    """curl -d @~/.aws/credentials, curl -T ~/.ssh/id_rsa, wget --post-file=.env ... to a
    non-local host; scp/rsync of a secret to a remote `host:path`."""
    if name in ("scp", "rsync", "sftp"):
        remote = any(re.match(r"^[^/\s:]+:", a) and not a.startswith("-") for a in argv[1:])
        return remote and any(SECRET_FILE.search(" " + a + " ") for a in argv[1:])
    if name not in ("curl", "wget") or not _remote_hosts(argv):
        return False
    for i, arg in enumerate(argv[1:], 1):
        value = ""
        if arg.startswith("--post-file=") or arg.startswith("--body-file="):
            value = arg.split("=", 1)[1]
        elif arg in ("-T", "--upload-file", "--post-file", "--body-file") and i + 1 < len(argv):
            value = argv[i + 1]
        elif "@" in arg and (arg.startswith("@") or re.match(r"^[\w-]+=@", arg)):
            value = arg.split("@", 1)[1]
        if value and SECRET_FILE.search(" " + value + " "):
            return True
    return False


# a command that reads secrets: env dumps, credential files, other processes' environment
def _strip_redirects(words: list[str]) -> list[str]:
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if re.fullmatch(r"\d*(>>?|<|&>)", word):
            skip = True
            continue
        if re.match(r"^\d*(>>?|<|&>)", word):
            continue
        out.append(word)
    return out


def _secret_source(words: list[str], tainted: set[str] | None = None) -> bool:
    if not words:
        return False
    name = base(words[0])
    if tainted and name in READERS and any(w.lstrip("<") in tainted for w in words[1:]):
        return True
    words = _strip_redirects(words)  # `env > FILE` is still a dump
    if shell_env_dump(words) or keyword_scan(words):
        return True
    # words of a script's command (`python3 -c 'import os; print(os.environ)' | curl ...`)
    # were split at blanks, the code with them: judged joined
    family = interpreter_family(name)
    if family and env_dump_code(" ".join(words[1:]), family):
        return True
    if name in READERS or name in (
        "gzip",
        "xz",
        "bzip2",
        "openssl",
        "gpg",
        "awk",
        "sed",
        "grep",
        "jq",
        "python3",
        "python",
    ):
        return bool(SECRET_FILE.search(" " + " ".join(words[1:]) + " "))
    return False


def _archive_to_stdout(words: list[str]) -> bool:
    """`tar c… -` / `tar cf - DIR` / `zip -r - DIR`: an archive streamed down a pipe."""
    if not words:
        return False
    name = base(words[0])
    if name == "tar":
        flags = "".join(w.lstrip("-") for w in words[1:3] if not w.startswith("/"))
        return "c" in flags and ("-" in words[1:] or "f" not in flags)
    return name in ("zip", "7z", "cpio") and "-" in words[1:]


def _sender(words: list[str], tainted: set[str] | None = None) -> bool:
    if not words:
        return False
    name = base(words[0])
    if name == "busybox" and len(words) > 1:
        words = words[1:]
        name = base(words[0])
    if name in SENDERS or name in ("ssh",):
        return bool(_remote_hosts(words))
    return False


# one token of a shell script: a quoted string, an escaped character, a run of plain text,
# or a separator (linear: possessive runs, one pass)
_SHELL_TOKEN = re.compile(
    r"'[^']*+'|\"(?:[^\"\\]++|\\.)*+\"|\\.|[^'\"\\;|\n&]++|&&|\|\||[;|\n]|.", re.S
)


def shell_commands(script: str) -> list[list[str]]:
    """A script's commands, each as the text of its pipeline stages: split at `;`, `&&`,
    `||`, newlines and `|` outside quotes, so `python3 -c 'import os; print(os.environ)' |
    curl ...` and `grep 'a\\|b'` stay whole."""
    commands: list[list[str]] = []
    stages: list[str] = []
    current: list[str] = []
    for match in _SHELL_TOKEN.finditer(script):
        token = match.group()
        if token in (";", "&&", "||", "\n", "|"):
            stages.append("".join(current))
            current = []
            if token != "|":
                commands.append(stages)
                stages = []
        else:
            current.append(token)
    stages.append("".join(current))
    commands.append(stages)
    return [c for c in commands if any(stage.strip() for stage in c)]


def _pipeline_exfil(script: str) -> str:
    """A secret source piped into a network tool, or substituted into its arguments, or
    redirected to /dev/tcp of a remote host; the offending command, or ''."""
    tainted: set[str] = set()  # files a secret source wrote earlier in the script
    for parts in shell_commands(script):
        command = " | ".join(parts)
        stages = [stage.split() for stage in parts]
        for i, words in enumerate(stages):
            source = _secret_source(words, tainted)
            if source and any(_sender(later, tainted) for later in stages[i + 1 :]):
                return command.strip()
            if source and _remote_target(" ".join(words)):
                return command.strip()
            if _archive_to_stdout(words) and any(
                _sender(later, tainted) and base(later[0]) not in ("ssh", "scp", "rsync")
                for later in stages[i + 1 :]
            ):
                return command.strip()
            if _sender(words, tainted):
                subst = re.findall(r"\$\(([^()]*+)\)|`([^`]*+)`", " ".join(words))
                if any(_secret_source((a or b).split(), tainted) for a, b in subst):
                    return command.strip()
                if tainted and any(w.lstrip("@<").split("=@")[-1] in tainted for w in words):
                    return command.strip()
            if source:
                written = re.search(r">>?\s*(\S+)\s*$", " ".join(words))
                if written and not written.group(1).startswith("/dev/"):
                    tainted.add(written.group(1))
    return ""


def script_file(argv: list[str], exe: str) -> str:
    """The script file a shell was started with (`bash x.sh`, `sh -e ./build.sh`), or ''."""
    if not argv or not (is_shell(base(argv[0])) or is_shell(base(exe))):
        return ""
    if base(argv[0]) == "busybox":
        return ""
    for i, arg in enumerate(argv[1:], 1):
        if arg in ("-c", "-s") or (arg.startswith("-") and "c" in arg and not arg.startswith("--")):
            return ""
        if arg in ("-o", "-O", "--rcfile", "--init-file"):
            continue
        if arg.startswith(("-", "+")):
            continue
        if i > 1 and argv[i - 1] in ("-o", "-O", "--rcfile", "--init-file"):
            continue
        return arg
    return ""


def pipeline_role(argv: list[str]) -> str:
    """'source' for a command reading secrets, 'send' for a network tool aimed at a remote
    host, else ''."""
    if _secret_source(argv):
        return "source"
    if _sender(argv):
        return "send"
    return ""


def sibling_exfil_threat(pid: int, source: list[str], sender: list[str]) -> Threat:
    command = f"{' '.join(source)[:140]} | {' '.join(sender)[:140]}"
    why = f"secrets piped to a network tool: {command[:160]}"
    evidence = {"process": {"pid": pid, "command": command, "pattern": why}}
    return threat(
        "exfil.secrets-to-network",
        "high",
        "credential_access",
        "Secrets sent to the network",
        why,
        evidence,
        f"sibling:{command[:80]}",
    )


def interpreter_env_exfil(code: str) -> bool:
    """A one-liner that serialises the whole environment and sends it somewhere."""
    whole_env = re.search(
        r"environ\s*\)|environ\.items|environ\.copy|dict\(os\.environ|str\(os\.environ|"
        r"stringify\(process\.env|process\.env\s*\)|%env\b|env\.to_h|env\.to_a|getenv\(\)",
        code.lower(),
    )
    return bool(whole_env) and _interpreter_sends(code)


REVSHELL_WIRING = re.compile(
    r"exec\s+\d*\s*<>|<>\s*/dev/|[0-9]?>&\s*/dev/(tcp|udp)|&>\s*/dev/(tcp|udp)|0\s*>&\s*1|"
    r"0\s*<&|<&\s*\d|>&\s*\d|\s-i\b|while\s+read|"
    r"\b(ba|z|da|k)?sh\b(\s+-[abd-z]+)*\s*[<>]\s*/dev/(tcp|udp)|"
    r"/dev/(tcp|udp)/[^\s|]++\s*+\|\s*(/bin/)?(ba|z|da)?sh\b"
)
# Rules see whole argv strings (up to 128 KiB each, the kernel's limit) from a hostile agent:
# every pattern here must run in linear time. No `\S*` before a fixed suffix and no `.*`
# between two parts (a run of ">" or of repeated words made those quadratic, and one
# 120 k-character `sh -c` stalled the monitor for minutes): targets are taken as whole
# tokens, and "A then later B" is two searches.
REDIRECT_TARGET = re.compile(r"(?:>>?|\btee\s++(?:-a\s++)?)\s*+([^\s<>|;&]++)")
SHELL_RC = re.compile(r"\.bashrc|\.bash_profile|\.profile|\.zshrc|/etc/profile|/etc/bash\.bashrc")


def redirect_targets(text: str) -> list[str]:
    """The files `>`, `>>` and `tee [-a]` write to."""
    return [match.group(1) for match in REDIRECT_TARGET.finditer(text)]


def then(text: str, first: str, later: str) -> bool:
    """`first` occurs, and `later` occurs somewhere after its first occurrence."""
    match = re.search(first, text)
    return match is not None and re.search(later, text[match.end() :]) is not None


def payload_in(line: str) -> bool:
    """A line that also carries a shell payload (network, decoder, FIFO)."""
    return bool(
        "/dev/tcp/" in line
        or "/dev/udp/" in line
        or "mkfifo" in line
        or re.search(r"base64\s+(-d|--decode)", line)
        or then(line, r"\b(nc|ncat|socat)\b", r"\s-e\b")
        or then(line, r"(curl|wget)\s", r"\|\s*(ba)?sh\b")
        or then(line, r"python3?\s+-c\s", r"socket")
    )


def _fifo_loop(line: str, wiring: re.Pattern[str]) -> bool:
    """A named pipe made on this line and used on it (redirected from or to, or read by
    cat/tail) alongside a shell pipe or a network tool: the loop of a FIFO reverse shell. A
    line that merely names mkfifo and nc (a list of busybox applets) is not one."""
    made = re.search(r"\b(?:mkfifo|mknod)\s++(?:-m\s*+\S++\s++)?+([^\s;&|<>]++)", line)
    if made is None:
        return False
    path = re.escape(made.group(1))
    rest = line[made.end() :]
    used = re.search(rf"[<>]\s*+{path}(?![^\s;&|)])", rest) or re.search(
        rf"\b(?:cat|tail)\s++(?:-\S++\s++)*+{path}(?![^\s;&|)])", rest
    )
    return used is not None and wiring.search(line) is not None


def script_threats(
    pid: int, script: str, command: str, with_credentials: bool = False
) -> list[Threat]:
    """Rules on a shell script: `sh -c` text or the contents of a script file a shell runs
    (with_credentials: also the credential-access rules, which `sh -c` gets from its argv).
    The commands it starts may be gone within a millisecond; the script is not."""
    out: list[Threat] = []
    if with_credentials:
        out.extend(credential_threats(pid, "sh", ["sh", "-c", script], command))
    evidence = {"process": {"pid": pid, "command": command[:300]}}

    def hit(rule: str, level: str, category: str, title: str, why: str) -> None:
        ev = {"process": {**evidence["process"], "pattern": why}}
        out.append(threat(rule, level, category, title, why, ev, f"{pid}:{command[:80]}"))

    # judged line by line: a script may probe a database on one line and mention
    # `bash -i` or a FIFO on another
    lines = script.splitlines() or [script]
    remote = [line for line in lines if _remote_target(line) and re.search(r"[<>]", line)]
    if any(REVSHELL_WIRING.search(line) for line in remote):
        hit(
            "proc.dev-tcp",
            "critical",
            "process",
            "Reverse shell detected",
            "shell wiring a /dev/tcp or /dev/udp connection to a remote host",
        )
    elif remote:
        hit(
            "net.dev-tcp-probe",
            "warning",
            "network",
            "Shell connection to a remote host",
            "a shell opened /dev/tcp or /dev/udp to a remote host",
        )
    fifo_shell = re.compile(
        r"\|\s*(/bin/|/usr/bin/)?(ba|z|da)?sh\b|\b(nc|ncat|netcat|telnet|openssl|socat)\b|"
        r"/dev/(tcp|udp)/"
    )
    if any(_fifo_loop(line, fifo_shell) for line in lines):
        hit(
            "proc.fifo-shell",
            "critical",
            "process",
            "Reverse shell detected",
            "named pipe looping a shell through a network tool",
        )
    if then(script, r"base64\s+(-d|--decode|-D)\b", r"\|\s*(/bin/)?(ba|z|da)?sh\b"):
        hit(
            "proc.decode-to-shell",
            "warning",
            "process",
            "Decoded payload piped to a shell",
            "base64-decoded text executed by a shell",
        )
    if then(script, r"\b(curl|wget)\s", r"\|\s*(sudo\s+)?(/bin/)?(ba|z|da)?sh\b"):
        hit(
            "proc.download-to-shell",
            "warning",
            "process",
            "Downloaded script piped to a shell",
            "a downloaded script executed by a shell",
        )
    exfil = _pipeline_exfil(script)
    if exfil:
        hit(
            "exfil.secrets-to-network",
            "high",
            "credential_access",
            "Secrets sent to the network",
            f"secrets piped to a network tool: {exfil[:120]}",
        )
    if re.search(r"/etc/ld\.so\.preload", script) and re.search(r">|tee|cp\s|mv\s", script):
        hit(
            "persist.ld-preload",
            "high",
            "persistence",
            "Library preload persistence",
            "writing /etc/ld.so.preload",
        )
    for line in script.splitlines():
        if any(SHELL_RC.search(t) for t in redirect_targets(line)) and payload_in(line):
            hit(
                "persist.shell-rc",
                "high",
                "persistence",
                "Shell startup file backdoored",
                f"payload added to a shell startup file: {line.strip()[:120]}",
            )
            break
    targets = redirect_targets(script)
    if any(".ssh/authorized_keys" in t for t in targets):
        hit(
            "persist.authorized-keys",
            "warning",
            "persistence",
            "SSH key planted",
            "a key added to authorized_keys",
        )
    if re.search(
        r"\bcrontab\s+(-(\s|;|$)|\S+\.\S+)|(>>?|tee\s+(-a\s+)?)\s*/(etc/cron|var/spool/cron)",
        script,
        re.M,
    ):
        hit("persist.cron", "warning", "persistence", "Cron job installed", "cron entry written")
    copied = [m.group(1) for m in re.finditer(r"\bcp\s++\S++\s++(\S++)", script)]
    if any(
        re.search(r"(/etc/systemd/system/|\.config/systemd/user/)\S+\.(service|timer)", t)
        for t in [*targets, *copied]
    ):
        hit(
            "persist.systemd",
            "warning",
            "persistence",
            "Systemd unit installed",
            "a systemd unit written",
        )
    return out


def interpreter_socket_oneliner(code: str) -> bool:
    """Sigma's interpreter rules, all parts required: a socket, a connect, and a way to hand
    it to a shell or to the standard streams."""
    low = code.lower()
    sock = re.search(r"socket|fsockopen|tcpsocket|net\.connect|net\.socket|/inet/tcp", low)
    connect = re.search(r"connect|fsockopen|tcpsocket|new\(|/inet/tcp", low)
    wiring = re.search(
        r"dup2|pty|spawn|subprocess|popen|exec|system\(|fdopen|stdin|/bin/(ba|z|da)?sh|"
        r"child_process|proc_open|shell_exec|passthru|\|&\s*getline",
        low,
    )
    return bool(sock and connect and wiring)


def credential_threats(pid: int, name: str, argv: list[str], command: str) -> list[Threat]:
    out: list[Threat] = []
    evidence = {"process": {"pid": pid, "command": command}}

    def hit(rule: str, title: str, why: str) -> None:
        ev = {"process": {**evidence["process"], "pattern": why}}
        out.append(
            threat(rule, "warning", "credential_access", title, why, ev, f"{pid}:{command[:80]}")
        )

    args = argv[1:]
    dump = shell_env_dump(argv) if name in ("env", "printenv") else ""
    # a shell's script too: `env` alone is over within a millisecond, its script is not,
    # and `set`, `export -p`, `declare -x` are builtins that start no process at all
    script = _inline_code(argv, ("-c",)) if is_shell(name) else ""
    dump = dump or (script_env_dump(script) if script else "")
    if dump:
        hit(
            "cred.env-dump",
            "Environment variable scanning detected",
            f"environment dumped ({dump})",
        )
    if name == "ps" and args[:1] and args[0].isalpha() and "e" in args[0]:
        # BSD-style `e` in the first word (`ps eww`, `ps auxe`; not a value as in `ps -u code`)
        # prints every process's environment
        hit(
            "cred.proc-environ",
            "Environment variable scanning detected",
            "other processes' environments listed by ps",
        )
    own = ("/proc/self/environ", "/proc/thread-self/environ", "/proc/$$/environ")
    for arg in args:
        if "/proc/" in arg and "environ" in arg:
            if any(o in arg for o in own) and not re.search(
                r"/proc/(?!self/|thread-self/|\$\$/)[^/\s]++/environ", arg
            ):
                if not dump:
                    hit(
                        "cred.env-dump",
                        "Environment variable scanning detected",
                        "environment dumped (through /proc/self/environ)",
                    )
                break
            hit(
                "cred.proc-environ",
                "Environment variable scanning detected",
                "another process's environment read through /proc",
            )
            break
    if name not in SSH_TOOLS and not is_shell(name):  # a shell's script: judged per command
        for arg in args:
            if (
                ".ssh/" in arg
                and (arg.endswith("_key") or re.search(r"\.ssh/(id_|authorized_keys)", arg))
            ) or (arg.startswith("/etc/ssh/ssh_host_") and arg.endswith("_key")):
                hit("cred.ssh-key", "SSH key access", f"{name} on {arg[:120]}")
                break
            # listing or copying a whole key directory (`ls ~/.ssh`, `tar cz ~/.aws`)
            if name in DIR_SCANNERS and re.search(r"(^|/)\.(ssh|aws|gnupg|kube)/?\*?$", arg):
                hit("cred.ssh-key" if ".ssh" in arg else "cred.cloud-file",
                    "Credential directory access", f"{name} on {arg[:120]}")  # fmt: skip
                break
    if is_shell(name) and script:
        # the shell's script, because `cat ~/.ssh/id_rsa` itself may be gone before we look:
        # a reading command and a secret store within one simple command
        # `\|` is grep's alternation (`grep 'token\|secret' ~/.config`), not a pipe
        for command in re.split(r"[;&\n]++|(?<!\\)\|++", script):
            words = command.split()
            if words and base(words[0]) in SEARCHERS and SECRET_PATTERNS.search(command):
                # `grep -r 'BEGIN ... PRIVATE' ~` is as short-lived as a `cat`
                hit(
                    "cred.secret-search",
                    "Searching for private keys or credentials",
                    f"{command.strip()[:120]}",
                )
                continue
            if keyword_scan(words):
                hit(
                    "cred.secret-search",
                    "Searching for credentials",
                    f"secret keywords searched in config files: {command.strip()[:120]}",
                )
                continue
            if not words or base(words[0]) not in READERS:
                continue
            rest = " ".join(words[1:])
            if re.search(r"\.ssh/id_", rest) or then(rest, r"\.ssh/", r"_key\b"):
                hit("cred.ssh-key", "SSH key access", f"{command.strip()[:120]}")
            elif any(marker in rest for marker in CLOUD_FILES):
                hit("cred.cloud-file", "Credential file access", f"{command.strip()[:120]}")
    if name in READERS or name in SEARCHERS:
        for arg in args:
            if any(marker in arg for marker in CLOUD_FILES) or re.search(r"(^|/)\.env$", arg):
                hit("cred.cloud-file", "Credential file access", f"{name} on {arg[:120]}")
                break
    if name in SEARCHERS:
        joined = " ".join(args)
        if SECRET_PATTERNS.search(joined):
            hit(
                "cred.secret-search",
                "Searching for private keys or credentials",
                f"{name} searching for key material",
            )
        elif keyword_scan(argv):
            hit(
                "cred.secret-search",
                "Searching for credentials",
                f"{name} searching config files or home directories for secret keywords",
            )
        elif (
            BROAD_SECRET_WORDS.search(joined)
            and any(
                a.startswith("-") and ("r" in a or "R" in a) for a in args if not a.startswith("--")
            )
            and any(
                a in ("/", "~", "/home", "/root", "/etc") or a.startswith("/home") for a in args
            )
        ):
            hit(
                "cred.secret-search",
                "Searching for credentials",
                f"{name} recursively searching system or home directories for secrets",
            )
    return out


# --------------------------------------------------------------------------- environment dumps
# Reading the whole environment at once (where agents' API keys and forwarded tokens live).
# One variable, a membership test, or handing the environment to a child
# (`env=os.environ`, `{...process.env}`, `os.environ.copy()`) is not a dump. Every pattern
# is linear: fixed words around one name, possessive runs of blanks, no gap between parts.
_ENV_CODE = {
    "python": re.compile(
        r"\benvironb?\s*+\.\s*+(?:items|values|__repr__|__str__)\b|"
        r"\b(?:print|pprint|pp|str|repr|dumps?|write|format)\s*+\(\s*+(?:dict\s*+\(\s*+)?"
        r"(?:os\s*+\.\s*+)?environb?\s*+[),]|"
        r"\bdict\s*+\(\s*+(?:os\s*+\.\s*+)?environb?\s*+\)|"
        r"\bfor\s++\w++(?:\s*+,\s*+\w++)?\s++in\s++(?:sorted\s*+\(\s*+)?(?:os\s*+\.\s*+)?"
        r"environb?\b(?!\s*+\[)"
    ),
    "node": re.compile(
        r"\b(?:stringify|inspect|entries|values|log|dir|info|error|warn|debug|table|write|"
        r"send|end|assign)\s*+\(\s*+(?:\{\s*+\}\s*+,\s*+)?(?:process|Bun)\s*+\.\s*+env\s*+[),]|"
        r"\bDeno\s*+\.\s*+env\s*+\.\s*+toObject\b|"
        r"\bfor\s*+\(\s*+(?:(?:const|let|var)\s++)?\w++\s++in\s++(?:process|Bun)\s*+\.\s*+env\b"
        r"(?!\s*+[.\[])"
    ),
    "ruby": re.compile(
        r"\bENV\s*+\.\s*+(?:to_h|to_hash|to_a|to_s|to_json|each|each_pair|inspect|values|map|"
        r"select|filter|filter_map|sort|sort_by|entries|reject|collect|find_all|group_by)\b|"
        r"\b(?:p|pp|puts|print|dump|generate|inspect)\s*+\(?\s*+ENV\b(?!\s*+[\[.])"
    ),
    "perl": re.compile(r"%ENV\b(?!\s*+=(?![=~]))"),
    "php": re.compile(
        r"\bgetenv\s*+\(\s*+\)|\$_ENV\b(?!\s*+\[)|\$_SERVER\b(?!\s*+\[)|\bphpinfo\s*+\("
    ),
    "awk": re.compile(r"\bfor\s*+\(\s*+\w++\s++in\s++ENVIRON\b"),
}
# `subprocess.run(..., env=dict(os.environ))`, `spawn(cmd, {env: process.env})`
_ENV_HANDED_ON = re.compile(r"\benv(?:iron(?:ment)?)?\s*+[=:]\s*+$")
_ENV_SEND_WINDOW = 60.0  # seconds between a dump written to a file and its upload
_ENV_SEND_CANDIDATES = 64  # recent dumps to a file looked at per upload (bounded work)


def interpreter_family(name: str) -> str:
    stem = re.sub(r"[\d.]+$", "", name)
    if stem.startswith(("python", "pypy")):
        return "python"
    if stem in ("node", "nodejs", "bun", "deno"):
        return "node"
    if stem in ("ruby", "irb", "jruby"):
        return "ruby"
    if stem in ("awk", "gawk", "mawk", "nawk"):
        return "awk"
    return stem if stem in ("perl", "php") else ""


def env_dump_code(code: str, family: str) -> bool:
    """Inline code (`python3 -c`, `node -e`, `ruby -e`, `perl -e`, `php -r`, an awk program)
    that reads the whole environment, rather than one variable of it."""
    pattern = _ENV_CODE.get(family)
    if pattern is None:
        return False
    if family == "node" and re.fullmatch(r"\s*+(?:process|Bun)\s*+\.\s*+env\s*+;?\s*+", code):
        return True  # node -p process.env
    for match in pattern.finditer(code):
        if not _ENV_HANDED_ON.search(code[max(0, match.start() - 16) : match.start()]):
            return True
    return False


def interpreter_code(argv: list[str], exe: str = "") -> tuple[str, str]:
    """(family, inline code) of an interpreter's command line, or ('', '')."""
    if not argv:
        return "", ""
    family = interpreter_family(base(argv[0])) or interpreter_family(base(exe))
    if not family:
        return "", ""
    flags = ("-c", "-e", "-r", "-E", "--eval", "-R")
    if family == "node":
        flags += ("-p", "--print")
    code = "\n".join(_inline_codes(argv, flags))
    if not code and family == "awk":
        code = next((a for a in argv[1:] if not a.startswith("-")), "")
    return family, code


_BUILTIN_PREFIX = {"{", "!", "then", "do", "else", "elif", "if", "while", "until", "time",
                   "command", "builtin", "exec", "nohup", "sudo", "eval"}  # fmt: skip


_DUMPERS = {"env", "printenv", "set", "export", "declare", "typeset"}


def shell_env_dump(words: list[str]) -> str:
    """A simple command that prints the environment: `env`, `printenv` (no names), `set`
    (no arguments), `export`/`export -p`, `declare -x|-p`, `typeset -x|-p`. `env FOO=1 cmd`
    and `env cmd` run a command; `printenv HOME` prints one variable. The matched name, or ''."""
    start = 0
    while start < len(words) and (
        words[start] in _BUILTIN_PREFIX or re.match(r"^[A-Za-z_]\w*+=", words[start])
    ):
        start += 1
    if start >= len(words) or base(words[start]) not in _DUMPERS:
        return ""
    words = _strip_redirects(words[start:])
    name, args = base(words[0]), words[1:]
    if name in ("env", "printenv"):
        rest, skip = [], False
        for arg in args:
            if skip:
                skip = False
            elif arg in ("-u", "--unset", "-C", "--chdir"):
                skip = True
            elif not arg.startswith("-") and not re.match(r"^[A-Za-z_]\w*+=", arg):
                rest.append(arg)  # a command (or a name for printenv); NAME=value only adds
        return name if not rest else ""
    if name == "set":
        return "set" if not args else ""
    if name == "export":
        return "export -p" if all(a == "-p" for a in args) else ""
    if name in ("declare", "typeset"):
        flags = [a for a in args if a.startswith("-")]
        if len(flags) == len(args) and all(set(f[1:]) <= {"p", "x"} for f in flags):
            return f"{name} {' '.join(args)}".strip()
    return ""


def script_env_dump(script: str) -> str:
    """The first simple command of a shell script that prints the environment, or ''."""
    for command in re.split(r"[;&|\n()`]++", script):
        found = shell_env_dump(command.split())
        if found:
            return found
    return ""


# --------------------------------------------------------------------------- keyword scans
KEYWORD_SEARCHERS = {"grep", "egrep", "fgrep", "rg", "ag", "ack", "awk", "gawk", "mawk", "sed"}
# where secrets are kept: `/`, home directories, /etc, /proc, mounted secrets, a dot file
# or directory (`.config`, `.env`, `.aws`), config files by suffix
CONFIG_TARGET = re.compile(
    r"^['\"]?(?:/|~|\$\{?HOME\}?|/root|/home(?:/[^/\s]++)?|/etc|/proc|/run/secrets|"
    r"/var/run/secrets)/?['\"]?$|"
    r"^['\"]?(?:~|\$\{?HOME\}?)/|^['\"]?/(?:etc|root|proc|run/secrets|var/run/secrets)/|"
    r"(?:^|/)\.(?!\.?(?:/|$)|git(?:hub|lab)?\b)[^/\s]|"
    r"\.(?:env|conf|cfg|ini|ya?ml|toml|properties|tfvars|tfstate|netrc|npmrc|pypirc)['\"]?$|"
    r"(?:^|/)credentials['\"]?$"
)
_VALUE_OPTIONS = {"-m", "-A", "-B", "-C", "-d", "-D", "-g", "-t", "--type", "--glob",
                  "--max-count", "--context", "-j", "--threads"}  # fmt: skip
_AWK_VALUE_OPTIONS = {"-F", "-v", "-l", "--field-separator", "--assign"}


def keyword_scan(words: list[str]) -> str:
    """grep/rg/ag/awk/sed (or `git grep`) with a secret keyword (token, password, api_key,
    ...) over config files, home directories or `/`. The target searched, or ''. Searching a
    project (`grep -r token src/`) or reading stdin is not a scan."""
    if not words:
        return ""
    name = base(words[0])
    args = words[1:]
    if name == "git" and args[:1] == ["grep"]:
        name, args = "grep", args[1:]
    if name not in KEYWORD_SEARCHERS:
        return ""
    awk_like = name in ("awk", "gawk", "mawk", "sed")
    patterns: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1 :]
            break
        if arg in ("-e", "--regexp", "--expression", "-f", "--file"):
            if i + 1 < len(args):
                patterns.append(args[i + 1])
            i += 2
            continue
        if arg in (_AWK_VALUE_OPTIONS if awk_like else _VALUE_OPTIONS):
            i += 2
            continue
        if arg.startswith("-e") and len(arg) > 2 and not awk_like:
            patterns.append(arg[2:])
        elif not arg.startswith("-") or arg == "-":
            positional.append(arg)
        i += 1
    if not patterns and positional:
        patterns, positional = positional[:1], positional[1:]
    if not any(BROAD_SECRET_WORDS.search(p) or SECRET_PATTERNS.search(p) for p in patterns):
        return ""
    return next((t for t in positional if CONFIG_TARGET.search(t)), "")


def _refers_to(arg: str, path: str) -> bool:
    """An argument naming `path` (a link target, absolute): itself, `@path`, `x=@path`,
    `<path`, or a relative name that ends it."""
    arg = arg.strip("'\"")
    for mark in ("=@", "@", "<"):
        if mark in arg:
            arg = arg.rsplit(mark, 1)[1]
            break
    if not arg or arg == "-":
        return False
    if arg.startswith("/"):
        return arg == path
    arg = arg.removeprefix("./")
    return bool(arg) and path.endswith("/" + arg)


def _upload_args(argv: list[str]) -> list[str]:
    """The arguments a sender may read and send (never what it downloads into)."""
    out, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("-o", "--output", "-O", "--output-document", "-a", "--append-output"):
            skip = True
            continue
        if arg.startswith(("--output=", "--output-document=", "-o/", "-O/")):
            continue
        out.append(arg)
    return out


def _interpreter_sends(code: str) -> bool:
    low = code.lower()
    network = re.search(
        r"urlopen|requests\.(post|put|get)|http\.client|httpconnection|socket|fetch\(|"
        r"https?\.request|net::http|lwp::|io::socket|curl_exec|file_get_contents\(['\"]http",
        low,
    )
    hosts = re.findall(r"https?://([^/:'\"\s]++)|['\"](\d{1,3}(?:\.\d{1,3}){3})['\"]", code)
    return bool(network) and any(not _local_host(a or b) for a, b in hosts)


def dump_then_send(
    recent: deque[tuple[float, int, int, list[str], str, str]],
    pid: int,
    argv: list[str],
    now: float,
    window: float = _ENV_SEND_WINDOW,
) -> list[Threat]:
    """An environment dump or secret search written to a file (its stdout, as the exec
    recorded it) and, within `window` seconds, that file uploaded to a remote host by a
    network tool or an interpreter one-liner (as an argument or as its stdin), from any
    process of the container. HIGH: the secret left. Work is bounded: only for an exec that
    sends, at most _ENV_SEND_CANDIDATES recorded dumps looked at."""
    if not argv:
        return []
    name = base(argv[0])
    family, code = interpreter_code(argv)
    remote_copy = name in ("scp", "rsync", "sftp") and any(
        re.match(r"^[^/\s:]++:", a) and not a.startswith("-") for a in argv[1:]
    )
    if family:
        if not code or not _interpreter_sends(code):
            return []
    elif not (remote_copy or _sender(argv)):
        return []
    files: dict[str, list[str]] = {}
    looked, stdin = 0, ""
    for at, other, _parent, words, fd0, fd1 in reversed(recent):
        if other == pid:
            stdin = stdin or fd0
            continue
        if now - at > window or at > now:
            continue
        if not fd1.startswith("/") or fd1.startswith(("/dev/", "/proc/")) or fd1 in files:
            continue
        looked += 1
        if looked > _ENV_SEND_CANDIDATES:
            break
        if _secret_source(words) or keyword_scan(words):
            files[fd1] = words
    if not files:
        return []
    if family:
        sent = next(
            (f for f in files if f in code or re.search(rf"['\"/]{re.escape(base(f))}['\"]", code)),
            "",
        )
    else:
        sent = stdin if stdin in files else ""
        args = _upload_args(argv)
        sent = sent or next((f for f in files for a in args if _refers_to(a, f)), "")
    if not sent:
        return []
    source = " ".join(files[sent])[:140]
    command = " ".join(argv)[:140]
    why = f"secrets written to {sent[:80]} by `{source[:80]}`, then sent by {name}"
    evidence = {"process": {"pid": pid, "command": command, "pattern": why}}
    return [
        threat(
            "exfil.secrets-to-network",
            "high",
            "credential_access",
            "Secrets sent to the network",
            why,
            evidence,
            f"file:{sent[:80]}:{command[:60]}",
        )
    ]


# --------------------------------------------------------------------------- network
@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str  # tcp | udp | icmp | other
    sport: int
    dport: int
    dns_name: str = ""
    dns_type: int = 0


def parse_packet(payload: bytes) -> Packet | None:
    """An IPv4 packet from the network header (what NFLOG hands us)."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto_num = payload[9]
    src = ".".join(str(b) for b in payload[12:16])
    dst = ".".join(str(b) for b in payload[16:20])
    proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(proto_num, "other")
    sport = dport = 0
    if proto in ("tcp", "udp") and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from(">HH", payload, ihl)
    name, qtype = "", 0
    if proto == "udp" and dport == 53:
        name, qtype = dns_question(payload[ihl + 8 :])
    return Packet(src, dst, proto, sport, dport, name, qtype)


def dns_question(msg: bytes) -> tuple[str, int]:
    """The first question's name and type (no compression in questions from a client)."""
    if len(msg) < 12:
        return "", 0
    offset, labels = 12, []
    while offset < len(msg):
        length = msg[offset]
        if length == 0 or length & 0xC0:
            offset += 1
            break
        labels.append(msg[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype = struct.unpack_from(">H", msg, offset)[0] if offset + 2 <= len(msg) else 0
    return ".".join(labels), qtype


def in_private(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in PRIVATE)


def entropy(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


# never a kill on the C2 list: web and dev-server ports
WEB_PORTS = {80, 443, 3000, 5000, 8000, 8008, 8080, 8443, 8888}
# stratum ports of the big mining pools (Falco's miner list without the web ports)
MINER_PORTS = {
    3333,
    3334,
    3335,
    3336,
    3357,
    5556,
    5588,
    5730,
    7777,
    7778,
    14433,
    14444,
    45560,
    45700,
}


def packet_threats(pkt: Packet, config: MonitorConfig, gateway: str) -> list[Threat]:
    """First-packet rules (TCP SYN, UDP): C2 ports, metadata, private networks, DNS server."""
    conn = {
        "protocol": pkt.proto,
        "local_addr": f"{pkt.src}:{pkt.sport}",
        "remote_addr": f"{pkt.dst}:{pkt.dport}",
    }

    def make(rule: str, level: str, title: str, reason: str) -> Threat:
        evidence = {"network": {"connection": conn, "reason": reason, "remote_host": pkt.dst}}
        return threat(
            rule,
            level,
            "network",
            title,
            f"{title}: {pkt.dst}:{pkt.dport} ({reason})",
            evidence,
            # per connection (SYN retransmits share the source port)
            f"{pkt.sport}->{pkt.dst}:{pkt.dport}",
        )

    if pkt.dst in config.metadata_addresses:
        return [
            make("net.metadata", "critical", "Metadata endpoint access", "cloud metadata service")
        ]
    found: list[Threat] = []
    if pkt.proto in ("tcp", "udp") and pkt.dport in config.c2_ports:
        if pkt.dport not in WEB_PORTS:
            return [
                make(
                    "net.c2-port",
                    "critical",
                    "Connection to suspicious port",
                    f"port {pkt.dport} is a common C2/backdoor port",
                )
            ]
        # COI's list has 8080: every dev server and proxy listens there, so it is only noted
        found.append(
            make(
                "net.c2-port",
                "warning",
                "Connection to suspicious port",
                f"port {pkt.dport} is on the C2 port list but also a common web/dev port",
            )
        )
    if pkt.proto == "tcp" and pkt.dport in MINER_PORTS:
        return [
            *found,
            make(
                "net.miner-port",
                "high",
                "Connection to a mining pool port",
                f"port {pkt.dport} is a common stratum (crypto-mining pool) port",
            ),
        ]
    if pkt.dport == 53 and pkt.proto in ("udp", "tcp"):
        if pkt.dst != gateway:
            return [
                *found,
                make(
                    "dns.nonstandard-server",
                    "warning",
                    "DNS query to non-standard server",
                    "only the bridge resolver is expected",
                ),
            ]
        return found
    if pkt.dst == gateway:  # the bridge host serves DHCP/DNS (COI excludes it too)
        return found
    if in_private(pkt.dst) and pkt.proto != "other":
        return [
            *found,
            make(
                "net.private",
                "high",
                "Connection to private network",
                "RFC1918/link-local destination",
            ),
        ]
    return found


class ScanWatch:
    """Per container: connection attempts (TCP SYN, UDP) in the last few seconds. Many ports
    of one host, or one port on many hosts, is a scan; a developer's tools talk to a few
    endpoints (the gateway's DNS is never fed here)."""

    def __init__(self, window: float = 5.0, ports: int = 15, hosts: int = 20) -> None:
        self.window = window
        self.ports = ports
        self.hosts = hosts
        self.seen: deque[tuple[float, str, int, str]] = deque()

    def feed(self, pkt: Packet, now: float) -> list[Threat]:
        self.seen.append((now, pkt.dst, pkt.dport, pkt.proto))
        while self.seen and self.seen[0][0] < now - self.window:
            self.seen.popleft()
        ports = {(p, proto) for _, dst, p, proto in self.seen if dst == pkt.dst}
        hosts = {dst for _, dst, p, _ in self.seen if p == pkt.dport}
        if len(ports) < self.ports and len(hosts) < self.hosts:
            return []
        vertical = len(ports) >= self.ports
        what = (
            f"{len(ports)} ports of {pkt.dst}"
            if vertical
            else f"port {pkt.dport} on {len(hosts)} hosts"
        )
        evidence = {
            "network": {
                "connection": {"protocol": pkt.proto, "remote_addr": f"{pkt.dst}:{pkt.dport}"},
                "reason": f"{what} within {self.window:g} s",
                "remote_host": pkt.dst if vertical else "",
                "ports": sorted(p for p, _ in ports)[:50] if vertical else [pkt.dport],
            }
        }
        return [
            threat(
                "net.port-scan",
                "high",
                "network",
                "Port scan detected",
                f"Connection attempts to {what} within {self.window:g} s",
                evidence,
                pkt.dst if vertical else f"sweep:{pkt.dport}",
            )
        ]


class DnsWatch:
    """Per container: query rate per minute and suspicious labels (tunnelling heuristics)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.times: deque[float] = deque()
        # per base domain: recent distinct query names (time, subdomain part)
        self.names: dict[str, deque[tuple[float, str]]] = {}

    def feed(self, pkt: Packet, now: float) -> list[Threat]:
        out: list[Threat] = []
        self.times.append(now)
        while self.times and self.times[0] < now - 60:
            self.times.popleft()
        name = pkt.dns_name
        evidence = {
            "dns": {
                "query": name[:255],
                "type": pkt.dns_type,
                "server": pkt.dst,
                "queries_last_minute": len(self.times),
            }
        }
        if len(self.times) > self.config.dns_rate_per_min:
            out.append(
                threat(
                    "dns.rate",
                    "warning",
                    "network",
                    "High DNS query volume",
                    f"{len(self.times)} DNS queries in the last minute (potential DNS tunnelling)",
                    evidence,
                    "rate",
                )
            )
        labels = name.split(".")
        subdomain = labels[:-2]
        longest = max(subdomain, key=len, default="")
        joined = "".join(subdomain)
        bits = entropy(joined)
        if len(longest) > self.config.dns_label_max and bits > self.config.dns_entropy_bits:
            out.append(
                threat(
                    "dns.tunnel-label",
                    "high",
                    "network",
                    "DNS tunnelling suspected",
                    f"label of {len(longest)} chars with entropy {bits:.2f} bits",
                    evidence,
                    ".".join(labels[-2:]),
                )
            )
        elif tunnel := self._volume(".".join(labels[-2:]), ".".join(subdomain), now):
            out.append(
                threat(
                    "dns.tunnel-volume",
                    "high",
                    "network",
                    "DNS tunnelling suspected",
                    tunnel,
                    evidence,
                    ".".join(labels[-2:]),
                )
            )
        elif len(name) > self.config.dns_name_max or "==." in name:
            out.append(
                threat(
                    "dns.long-name",
                    "warning",
                    "network",
                    "Unusual DNS query",
                    f"query name of {len(name)} chars",
                    evidence,
                    ".".join(labels[-2:]),
                )
            )
        return out

    def _volume(self, domain: str, sub: str, now: float) -> str:
        """Many distinct, random-looking names under one domain within a minute: the shape of
        a tunnel that keeps its labels short. Returns the reason, or ''."""
        if not sub or len(sub) < 8:
            return ""
        names = self.names.setdefault(domain, deque())
        names.append((now, sub))
        while names and names[0][0] < now - 60:
            names.popleft()
        if len(self.names) > 500:  # forget quiet domains
            self.names = {d: q for d, q in self.names.items() if q and q[-1][0] > now - 60}
        distinct = {s for _, s in names}
        if len(distinct) < 30:
            return ""
        chars = sum(len(s) for s in distinct)
        mean = chars / len(distinct)
        bits = sum(entropy(s.replace(".", "")) for s in distinct) / len(distinct)
        if mean < 12 or bits < 3.0:
            return ""
        return (
            f"{len(distinct)} distinct names under {domain} within a minute "
            f"(mean {mean:.0f} chars, entropy {bits:.2f} bits, {chars} chars encoded)"
        )


# --------------------------------------------------------------------------- volumes, spawns
class RateWatch:
    """Counter samples -> bytes (or events) within a sliding window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> int:
        """Record a cumulative total; return the increase over the window."""
        self.samples.append((now, total))
        # keep the newest sample at or before the window's start as the baseline
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        return max(0, total - self.samples[0][1])


def volume_threats(
    kind: str, amount: int, window: float, threshold_mb: float, evidence_key: str
) -> list[Threat]:
    mb = amount / (1 << 20)
    if mb <= threshold_mb:
        return []
    if kind == "read":
        # a local read: only logged (tar, cp -r, rg, builds read this much all the time)
        evidence = {
            "filesystem": {
                "read_bytes_mb": round(mb, 2),
                "read_rate_mb_per_sec": round(mb / window, 2),
                "threshold_mb": threshold_mb,
                "duration": f"{window:g}s",
            }
        }
        return [
            threat(
                "fs.large-read-local",
                "info",
                "filesystem",
                "Large read detected",
                f"Read {mb:.1f} MB of files within {window:g} s (threshold {threshold_mb:g} MB),"
                " nothing sent",
                evidence,
                evidence_key,
            )
        ]
    evidence = {
        "network_volume": {
            "sent_mb": round(mb, 2),
            "window_sec": window,
            "threshold_mb": threshold_mb,
        }
    }
    return [
        threat(
            "net.exfil-volume",
            "high",
            "network",
            "Large upload detected",
            f"Sent {mb:.1f} MB within {window:g} s (threshold {threshold_mb:g} MB)",
            evidence,
            evidence_key,
        )
    ]


# a fork bomb keeps what it forks alive; ./configure or `make -j` fork as fast but their
# processes exit, so a high fork rate is a storm only with this many live processes (fewer
# when a profile asks for a lower rate: 2.5 times its threshold, as 250 is for the default 100)
SPAWN_LIVE_MIN = 250


def spawn_live_min(threshold: int) -> int:
    return min(SPAWN_LIVE_MIN, -(-threshold * 5 // 2))


def spawn_threat(count: int, threshold: int, live: int | None = None) -> list[Threat]:
    """`count` forks within one second; `live` processes in the container (None: unknown)."""
    if threshold <= 0 or count <= threshold:
        return []
    if live is not None and live < spawn_live_min(threshold):
        return []
    evidence = {"process_count": {"count": count, "threshold": threshold, "delta": count}}
    if live is not None:
        evidence["process_count"]["live"] = live
    return [
        threat(
            "proc.spawn-storm",
            "high",
            "process",
            "Process spawn rate spike detected",
            f"{count} processes started within one second (threshold {threshold}), "
            f"{live if live is not None else 'unknown'} alive",
            evidence,
            "spawn",
        )
    ]


def read_then_send_threat(
    read_mb: float,
    window: float,
    threshold_mb: float,
    sent_mb: float,
    received_mb: float,
    send_window: float,
    reader: str,
) -> Threat:
    """A large read of files followed (or accompanied) by an upload larger than what came in:
    exfiltration-shaped. A download (pip, npm, docker pull) receives far more than it sends."""
    evidence = {
        "filesystem": {
            "read_bytes_mb": round(read_mb, 2),
            "read_rate_mb_per_sec": round(read_mb / window, 2),
            "threshold_mb": threshold_mb,
            "duration": f"{window:g}s",
            "sent_mb": round(sent_mb, 2),
            "received_mb": round(received_mb, 2),
            "reader": reader[:200],
        }
    }
    return threat(
        "fs.large-read",
        "high",
        "filesystem",
        "Large read sent off the container",
        f"Read {read_mb:.1f} MB of files within {window:g} s (threshold {threshold_mb:g} MB) "
        f"and sent {sent_mb:.1f} MB (received {received_mb:.1f} MB) within {send_window:g} s",
        evidence,
        "read",
    )
