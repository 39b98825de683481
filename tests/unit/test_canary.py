"""Canaries (monitor/canary.py, sessions/canary_hook.py): value formats, uniqueness, the
markers matched on the wire (raw, hex, base64, base32; DNS labels), the registry the root
daemon reads (hostile files refused), and packet matching. Pure logic, no daemon."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from coi_tui.config.profiles import PRESETS
from coi_tui.config.schema import BY_PATH, MONITOR_CANARY_KINDS, Invalid, check_list
from coi_tui.monitor import canary
from coi_tui.monitor.rules import parse_packet
from coi_tui.sessions.canary_hook import mount_points, under_mount

SRC, DST = "10.199.0.23", "10.199.0.1"


# --------------------------------------------------------------------------- packets
def ipv4(proto: int, body: bytes, src: str = SRC, dst: str = DST) -> bytes:
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        1,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + body


def tcp(data: bytes, dport: int = 8000, flags: int = 0x18) -> bytes:
    header = struct.pack(">HHIIBBHHH", 40000, dport, 1, 1, 5 << 4, flags, 502, 0, 0)
    return ipv4(6, header + data)


def udp(data: bytes, dport: int) -> bytes:
    return ipv4(17, struct.pack(">HHHH", 40001, dport, 8 + len(data), 0) + data)


def dns_query(name: str) -> bytes:
    msg = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0)
    for label in name.split("."):
        msg += bytes([len(label)]) + label.encode()
    return udp(msg + b"\0" + struct.pack(">HH", 1, 1), 53)


def http_post(body: str, extra: str = "") -> bytes:
    head = (
        f"POST /collect HTTP/1.1\r\nHost: {DST}:8000\r\nUser-Agent: curl/7.88.1\r\n{extra}"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return tcp((head + body).encode())


# --------------------------------------------------------------------------- formats
def test_every_kind_has_a_home_path_outside_the_workspace() -> None:
    paths = canary.canary_paths()
    assert len(paths) == len(canary.CANARY_FILES) == 4
    for path in paths:
        assert path.startswith("/home/code/") and not path.startswith("/workspace")
    # ssh tries id_rsa, id_ecdsa, id_ed25519... by itself, never this name
    assert canary.BY_KIND["ssh"].path.endswith("/id_ed25519_deploy")
    assert canary.CANARY_KINDS == MONITOR_CANARY_KINDS  # the config's choices


def test_values_have_realistic_formats() -> None:
    made = {c.kind: c for c in canary.make_canaries(canary.CANARY_KINDS)}
    key_id, secret = made["aws"].values
    assert re.fullmatch(r"AKIA[A-Z2-7]{16}", key_id)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", secret)
    assert f"aws_access_key_id = {key_id}\n" in made["aws"].content
    assert f"aws_secret_access_key = {secret}\n" in made["aws"].content
    (token,) = made["gh"].values
    assert re.fullmatch(r"ghp_[A-Za-z0-9]{36}", token)
    assert f"oauth_token: {token}" in made["gh"].content
    assert made["gh"].content.startswith("github.com:\n")
    api_key, password = made["env"].values
    assert f"OPENAI_API_KEY=sk-proj-{api_key}\n" in made["env"].content
    assert f"postgres://app:{password}@" in made["env"].content
    for item in made.values():
        assert item.path == canary.BY_KIND[item.kind].path
        for value in item.values:
            assert len(value) >= canary.MIN_MARKER and value in item.content
            assert canary.VALUE_RE.match(value)


def parse_openssh(pem: str) -> dict[str, bytes]:
    """The fields of an unencrypted openssh-key-v1 file (PROTOCOL.key)."""
    lines = pem.strip().splitlines()
    assert lines[0] == "-----BEGIN OPENSSH PRIVATE KEY-----"
    assert lines[-1] == "-----END OPENSSH PRIVATE KEY-----"
    assert all(len(line) <= 70 for line in lines[1:-1])
    blob = base64.b64decode("".join(lines[1:-1]))
    assert blob.startswith(b"openssh-key-v1\0")
    offset = 15

    def string() -> bytes:
        nonlocal offset
        (length,) = struct.unpack_from(">I", blob, offset)
        value = blob[offset + 4 : offset + 4 + length]
        offset += 4 + length
        return value

    assert (string(), string(), string()) == (b"none", b"none", b"")
    assert struct.unpack_from(">I", blob, offset) == (1,)
    offset += 4
    public_blob = string()
    private = string()
    assert offset == len(blob)
    check1, check2 = private[:4], private[4:8]
    assert check1 == check2
    blob, offset = private, 8
    key_type, public, secret, comment = string(), string(), string(), string()
    padding = private[offset:]
    assert padding == bytes(range(1, len(padding) + 1)) and len(private) % 8 == 0
    assert public_blob == struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + public
    return {"type": key_type, "public": public, "secret": secret, "comment": comment}


def test_ssh_key_is_a_real_openssh_ed25519_key() -> None:
    # RFC 8032, section 7.1, test 1: the public key derived from the seed
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert canary.ed25519_public(seed).hex() == public
    key = canary.make_canary("ssh")
    fields = parse_openssh(key.content)
    assert fields["type"] == b"ssh-ed25519" and len(fields["public"]) == 32
    assert fields["secret"] == fields["secret"][:32] + fields["public"]
    assert canary.ed25519_public(fields["secret"][:32]) == fields["public"]
    # the markers are runs of the file's own text (what a raw upload of it shows)
    assert len(key.values) == 2
    for value in key.values:
        assert value in key.content and re.fullmatch(r"[A-Za-z0-9]{16,}", value)


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="no ssh-keygen on this host")
def test_ssh_keygen_reads_the_key_and_it_signs(tmp_path: Path) -> None:
    key = canary.make_canary("ssh")
    path = tmp_path / "id_ed25519_deploy"
    path.write_text(key.content)
    path.chmod(0o600)
    public = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert public.startswith("ssh-ed25519 ") and public.strip().endswith("deploy@ci-runner")
    message = tmp_path / "msg"
    message.write_text("hello")
    subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(path), "-n", "file", str(message)],
        capture_output=True,
        check=True,
    )
    (tmp_path / "allowed").write_text(f"me {public}")
    with message.open() as stdin:
        verify = ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "me"]
        verified = subprocess.run(
            [*verify, "-n", "file", "-s", f"{message}.sig"],
            stdin=stdin,
            capture_output=True,
            text=True,
        )
    assert verified.returncode == 0, verified.stderr  # its public half is its seed's


def test_values_are_unique_per_session() -> None:
    first = canary.make_canaries(canary.CANARY_KINDS)
    second = canary.make_canaries(canary.CANARY_KINDS)
    for a, b in zip(first, second, strict=True):
        assert a.kind == b.kind and a.content != b.content
        assert not set(a.values) & set(b.values)
    with pytest.raises(ValueError, match="unknown canary kind"):
        canary.make_canary("kube")


# --------------------------------------------------------------------------- markers
def index_of(*items: canary.Canary) -> dict[bytes, canary.Hit]:
    text = canary.registry_text("c1", "u1", items)
    return canary.parse_registry(text.encode()).index()


def test_markers_find_the_value_raw_and_encoded_whatever_the_alignment() -> None:
    aws = canary.make_canary("aws")
    key_id = aws.values[0]
    found = canary.markers([key_id])
    assert key_id.lower().encode() in found and all(len(m) >= 16 for m in found)
    assert all(m == m.lower() for m in found)
    index = index_of(aws)
    for prefix in ("", "x", "xy", "xyz", "wxyz"):  # every base64/base32 alignment
        document = (prefix + aws.content).encode()
        for encoded, encoding in (
            (base64.b64encode(document), "base64"),
            (base64.b32encode(document), "base32"),
            (document.hex().encode(), "hex"),
            (base64.b64encode(document).lower(), "base64"),  # case folded (a DNS label)
        ):
            hit = canary.find(index, b"data=" + encoded)
            assert hit == canary.Hit("aws", encoding), (prefix, encoding)
    assert canary.find(index, f"id={key_id.lower()}".encode()) == canary.Hit("aws", "raw")


def test_a_look_alike_is_not_a_canary() -> None:
    index = index_of(*canary.make_canaries(canary.CANARY_KINDS))
    other = canary.make_canaries(canary.CANARY_KINDS)  # same shapes, other values
    for item in other:
        assert canary.find(index, item.content.encode()) is None
        assert canary.find(index, base64.b64encode(item.content.encode())) is None
    assert canary.find(index, b"") is None


# --------------------------------------------------------------------------- the wire
def matcher_for(tmp_path: Path, *items: canary.Canary, instance: str = "uuid-1") -> Path:
    folder = tmp_path / "canaries"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "c1.json").write_text(canary.registry_text("c1", instance, items))
    return tmp_path


def threats(home: Path, packet: bytes, instance: str = "uuid-1") -> list[dict[str, object]]:
    matcher = canary.NetworkMatcher(home, "c1", instance)
    pkt = parse_packet(packet)
    assert pkt is not None
    return [t.record("killed") for t in matcher.threats(pkt, packet, now=100.0)]


def test_http_payload_with_a_canary_is_critical(tmp_path: Path) -> None:
    items = canary.make_canaries(canary.CANARY_KINDS)
    home = matcher_for(tmp_path, *items)
    made = {c.kind: c for c in items}
    key_id = made["aws"].values[0]
    (record,) = threats(home, http_post(f"id={key_id}&region=us-east-1"))
    assert record["rule_id"] == "canary.network" and record["level"] == "critical"
    assert record["evidence"]["canary"] == {  # type: ignore[index]
        "kind": "aws",
        "path": "/home/code/.aws/credentials",
        "where": "tcp",
        "remote": f"{DST}:8000",
        "encoding": "raw",
    }
    gh = http_post("{}", extra=f"Authorization: token {made['gh'].values[0]}\r\n")
    assert threats(home, gh)[0]["evidence"]["canary"]["kind"] == "gh"  # type: ignore[index]
    # the whole key file, as `curl --data-binary @key` sends it
    (ssh,) = threats(home, http_post(made["ssh"].content))
    assert ssh["evidence"]["canary"]["kind"] == "ssh"  # type: ignore[index]
    env = tcp(f"GET /?k=sk-proj-{made['env'].values[0]} HTTP/1.1\r\n\r\n".encode())
    assert threats(home, env)[0]["evidence"]["canary"]["kind"] == "env"  # type: ignore[index]
    # other UDP carries data too
    (udp_hit,) = threats(home, udp(f"creds {key_id}".encode(), 9999))
    assert udp_hit["evidence"]["canary"]["where"] == "udp"  # type: ignore[index]


def test_dns_label_with_a_canary_is_critical_even_split_and_lowercased(tmp_path: Path) -> None:
    aws = canary.make_canary("aws")
    home = matcher_for(tmp_path, aws)
    key_id = aws.values[0]
    for name in (
        f"{key_id.lower()}.exfil.test",
        f"{key_id[:9].lower()}.{key_id[9:].lower()}.exfil.test",  # split across labels
        f"{key_id.encode().hex()}.exfil.test",
    ):
        (record,) = threats(home, dns_query(name))
        assert record["evidence"]["canary"]["where"] == "dns", name  # type: ignore[index]
        assert record["evidence"]["canary"]["remote"] == f"{DST}:53"  # type: ignore[index]
    assert threats(home, dns_query("www.example.test")) == []


def test_benign_traffic_and_look_alikes_raise_nothing(tmp_path: Path) -> None:
    home = matcher_for(tmp_path, *canary.make_canaries(canary.CANARY_KINDS))
    look_alike = canary.make_canary("aws").values[0]
    assert threats(home, http_post(f"id={look_alike}")) == []
    assert threats(home, tcp(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")) == []
    assert threats(home, tcp(b"", flags=0x02)) == []  # a SYN carries nothing


def test_mid_stream_tells_data_segments_from_syns() -> None:
    assert canary.mid_stream(tcp(b"data", flags=0x18))
    assert canary.mid_stream(tcp(b"", flags=0x10))
    assert not canary.mid_stream(tcp(b"", flags=0x02))
    assert not canary.mid_stream(tcp(b"", flags=0x12))
    assert not canary.mid_stream(dns_query("a.b"))
    assert not canary.mid_stream(b"\x60" + bytes(40))  # IPv6: not ours
    assert canary.segment(tcp(b"abc")) == ("tcp", b"abc")
    assert canary.segment(udp(b"abc", 9)) == ("udp", b"abc")
    assert canary.segment(b"\x45" + bytes(5)) is None


def test_a_registry_for_another_instance_of_the_name_is_not_used(tmp_path: Path) -> None:
    aws = canary.make_canary("aws")
    home = matcher_for(tmp_path, aws, instance="old-uuid")
    packet = http_post(f"id={aws.values[0]}")
    assert threats(home, packet, instance="new-uuid") == []
    assert threats(home, packet, instance="old-uuid")


def test_the_registry_is_looked_for_again_until_it_appears(tmp_path: Path) -> None:
    aws = canary.make_canary("aws")
    matcher = canary.NetworkMatcher(tmp_path, "c1", "uuid-1")
    packet = http_post(f"id={aws.values[0]}")
    pkt = parse_packet(packet)
    assert pkt is not None
    assert matcher.threats(pkt, packet, now=10.0) == []  # no registry yet
    matcher_for(tmp_path, aws)
    assert matcher.threats(pkt, packet, now=10.1) == []  # looked for at most every 0.2 s
    assert matcher.threats(pkt, packet, now=10.3)


# --------------------------------------------------------------------------- registry
def registry(tmp_path: Path) -> Path:
    folder = tmp_path / "canaries"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / "c1.json"


def good_text() -> str:
    return canary.registry_text("c1", "u", canary.make_canaries(["aws", "gh"]))


def test_registry_round_trip(tmp_path: Path) -> None:
    items = canary.make_canaries(canary.CANARY_KINDS)
    registry(tmp_path).write_text(canary.registry_text("c1", "uuid-9", items))
    read = canary.read_registry(tmp_path, "c1", (os.getuid(), os.getgid()))
    assert read.container == "c1" and read.instance == "uuid-9"
    assert [(k, v) for k, _p, v in read.entries] == [(c.kind, c.values) for c in items]
    canary.remove_registry(tmp_path, "c1")
    assert not registry(tmp_path).exists()
    canary.remove_registry(tmp_path, "c1")  # already gone: fine
    canary.remove_registry(tmp_path, "../escape")  # not a container name: nothing done


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not JSON"),
        ("[]", "version 1"),
        ('{"version": 1, "container": "../x", "instance": "", "canaries": []}', "container"),
        ('{"version": 1, "container": "c1", "instance": 5, "canaries": []}', "instance"),
        ('{"version": 1, "container": "c1", "instance": "", "canaries": {}}', "list"),
        (
            '{"version": 1, "container": "c1", "instance": "", "canaries": '
            '[{"kind": "kube", "values": ["AAAAAAAAAAAAAAAAAAAA"]}]}',
            "unknown canary kind",
        ),
        (
            '{"version": 1, "container": "c1", "instance": "", "canaries": '
            '[{"kind": "aws", "values": ["short"]}]}',
            "values",
        ),
        (
            '{"version": 1, "container": "c1", "instance": "", "canaries": '
            '[{"kind": "aws", "values": []}]}',
            "values",
        ),
        (
            '{"version": 1, "container": "c1", "instance": "", "canaries": '
            '[{"kind": "aws", "values": ["AAAAAAAAAAAAAAAAAAAA"]}, '
            '{"kind": "aws", "values": ["AAAAAAAAAAAAAAAAAAAA"]}]}',
            "twice",
        ),
    ],
)
def test_malformed_registries_are_refused(tmp_path: Path, text: str, reason: str) -> None:
    registry(tmp_path).write_text(text)
    with pytest.raises(ValueError, match=reason):
        canary.read_registry(tmp_path, "c1")


def test_a_registry_written_for_another_container_is_refused(tmp_path: Path) -> None:
    registry(tmp_path).write_text(canary.registry_text("c2", "u", []))
    with pytest.raises(ValueError, match="written for c2"):
        canary.read_registry(tmp_path, "c1")


def test_hostile_registry_files_are_refused_without_blocking(tmp_path: Path) -> None:
    path = registry(tmp_path)
    outside = tmp_path / "elsewhere.json"
    outside.write_text(good_text())
    os.symlink(outside, path)  # a link to another file
    with pytest.raises(OSError):
        canary.read_registry(tmp_path, "c1")
    path.unlink()
    os.link(outside, path)  # a hard link to another file
    with pytest.raises(OSError, match="hard link"):
        canary.read_registry(tmp_path, "c1")
    path.unlink()
    os.mkfifo(path)  # a FIFO nobody writes: must not hang
    done = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            canary.read_registry(tmp_path, "c1")
        except BaseException as exc:  # recorded for the assertion
            errors.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5), "reading a FIFO registry blocked"
    assert isinstance(errors[0], OSError)
    path.unlink()
    path.write_text(good_text() + " " * canary.REGISTRY_LIMIT)  # huge
    with pytest.raises(OSError, match="larger"):
        canary.read_registry(tmp_path, "c1")
    with pytest.raises(ValueError, match="not a container name"):
        canary.read_registry(tmp_path, "../c1")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_registry_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = registry(tmp_path)
    path.write_text(good_text())
    os.chown(path, 4242, 4242)
    with pytest.raises(OSError, match="owned by uid 4242"):
        canary.read_registry(tmp_path, "c1", (1000, 1000))
    os.chown(path, 1000, 1000)
    assert canary.read_registry(tmp_path, "c1", (1000, 1000)).container == "c1"


@pytest.mark.skipif(os.geteuid() != 0, reason="the no-follow walk matters for root")
def test_a_symlinked_registry_folder_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c1.json").write_text(good_text())
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(tmp_path, 0o777)  # a folder others can change: links in it are not followed
    os.symlink(elsewhere, home / "canaries")
    try:
        with pytest.raises(OSError):
            canary.read_registry(home, "c1")
        canary.remove_registry(home, "c1")
        assert (elsewhere / "c1.json").exists(), "removed through a link"
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_refused_registry_is_said_once(tmp_path: Path) -> None:
    registry(tmp_path).write_text("junk")
    said: list[str] = []
    matcher = canary.NetworkMatcher(tmp_path, "c1", "", say=said.append)
    packet = http_post("x")
    pkt = parse_packet(packet)
    assert pkt is not None
    for step in range(5):
        assert matcher.threats(pkt, packet, now=float(step)) == []
    assert said == ["c1: canary registry refused: not JSON"]


# --------------------------------------------------------------------------- config, hook
def test_config_kinds_are_checked_and_hardened_turns_canaries_on() -> None:
    key = BY_PATH["monitoring.canary_kinds"]
    assert check_list(key, ["aws", "gh"]) == ["aws", "gh"]
    assert check_list(key, "ssh, env") == ["ssh", "env"]
    with pytest.raises(Invalid, match='"kube" is not one of aws, ssh, env, gh'):
        check_list(key, ["aws", "kube"])
    assert BY_PATH["monitoring.canaries"].default is False
    assert PRESETS["hardened"]["monitoring.canaries"] is True


def test_unknown_kind_in_a_config_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[monitoring]\ncanary_kinds = ["aws", "kube"]\n')
    env = {**os.environ, "COI_HOME": str(tmp_path)}
    env.pop("COI_CONFIG", None)
    result = subprocess.run(
        [sys_executable(), "-m", "coi_tui.cli.main", "config", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and '"kube" is not one of aws, ssh, env, gh' in lines[0], lines


def sys_executable() -> str:
    import sys

    return sys.executable


def test_canaries_never_go_under_a_mount() -> None:
    devices = {
        "root": {"type": "disk", "path": "/", "pool": "coi"},
        "workspace": {"type": "disk", "path": "/workspace", "source": "/src"},
        "aws": {"type": "disk", "path": "/home/code/.aws/", "source": "/host/.aws"},
        "eth0": {"type": "nic", "network": "coibr0"},
    }
    mounts = mount_points(devices)
    assert mounts == ["/workspace", "/home/code/.aws"]
    assert under_mount("/home/code/.aws/credentials", mounts) == "/home/code/.aws"
    assert under_mount("/home/code/.awsx", mounts) == ""
    assert under_mount("/home/code/.env", ["/home/code"]) == "/home/code"
    assert under_mount("/home/code/.env", mounts) == ""


def test_find_is_cheap_enough_for_every_logged_packet() -> None:
    index = index_of(*canary.make_canaries(canary.CANARY_KINDS))
    payload = os.urandom(canary.PAYLOAD_BYTES)
    started = time.process_time()  # CPU time: the machine's load does not count
    for _ in range(200):
        canary.find(index, payload)
    per_packet = (time.process_time() - started) / 200
    # about 50 us here; 200 logged segments a second at most (the nft rule): a tenth of a
    # core would be 500 us each
    assert per_packet < 0.0005, per_packet
    assert json.loads(canary.registry_text("c1", "u", []))["canaries"] == []


class FakeIncus:
    """The Incus calls plant() makes, over a dict of container paths -> type."""

    def __init__(self, paths: dict[str, str], devices: dict[str, dict[str, str]]) -> None:
        from coi_tui.incus import Instance

        self.paths = dict(paths)
        self.instance = Instance(
            "c1", "Running", config={"volatile.uuid": "uuid-7"}, expanded_devices=devices
        )
        self.pushed: dict[str, tuple[bytes, int, int]] = {}
        self.calls: list[str] = []
        self.remote = None

    def get_instance(self, name: str) -> object:
        return self.instance

    def stat_path(self, name: str, path: str) -> tuple[str, int, int]:
        from coi_tui.incus import NotFound

        if path not in self.paths:
            raise NotFound(f"{path}: not found")
        return self.paths[path], 0, 0o755

    def make_dir(self, name: str, path: str, *, uid: int, gid: int, mode: int) -> None:
        self.calls.append(f"mkdir {path} {mode:o}")
        self.paths[path] = "directory"

    def push_file(
        self, name: str, path: str, content: bytes, *, uid: int, gid: int, mode: int
    ) -> None:
        self.calls.append(f"push {path} {mode:o}")
        self.pushed[path] = (content, uid, mode)


HOME_ONLY = {"/home/code": "directory"}


def test_plant_writes_the_registry_then_the_files_as_code(tmp_path: Path) -> None:
    from coi_tui.sessions.canary_hook import plant

    incus = FakeIncus({**HOME_ONLY, "/home/code/.config": "directory"}, {})
    made = plant(incus, "c1", canary.CANARY_KINDS, uid=1000, home=tmp_path)
    assert [c.kind for c in made] == list(canary.CANARY_KINDS)
    assert "mkdir /home/code/.config 700" not in incus.calls  # an existing folder is kept
    for folder in ("/home/code/.aws", "/home/code/.ssh", "/home/code/.config/gh"):
        assert f"mkdir {folder} 700" in incus.calls
    for item in made:
        assert incus.pushed[item.path] == (item.content.encode(), 1000, 0o600)
    path = canary.registry_path(tmp_path, "c1")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    registry = canary.read_registry(tmp_path, "c1", (os.getuid(), os.getgid()))
    assert registry.instance == "uuid-7"
    assert [v for _k, _p, v in registry.entries] == [c.values for c in made]


def test_plant_never_overwrites_nor_follows_nor_enters_a_mount(tmp_path: Path) -> None:
    from coi_tui.sessions.canary_hook import plant

    paths = {
        **HOME_ONLY,
        "/home/code/.aws": "directory",
        "/home/code/.aws/credentials": "file",  # a real credential
        "/home/code/.ssh": "symlink",  # never written through
        "/home/code/.config": "directory",
    }
    devices = {"gh": {"type": "disk", "path": "/home/code/.config/gh", "source": "/host/gh"}}
    incus = FakeIncus(paths, devices)
    said: list[str] = []
    made = plant(incus, "c1", canary.CANARY_KINDS, home=tmp_path, say=said.append)
    assert [c.kind for c in made] == ["env"]
    assert list(incus.pushed) == ["/home/code/.env"]
    assert [line.split(":")[0] for line in said] == ["canary aws", "canary ssh", "canary gh"]
    assert "a real credential wins" in said[0] and "symlink" in said[1] and "mount" in said[2]


def test_a_persistent_slot_started_again_keeps_its_canaries(tmp_path: Path) -> None:
    from coi_tui.sessions.canary_hook import plant

    incus = FakeIncus(HOME_ONLY, {})
    first = plant(incus, "c1", ["aws", "gh"], home=tmp_path)
    assert len(incus.pushed) == 2
    # the same instance started again: the files are there, and they are ours
    restarted = FakeIncus(incus.paths | dict.fromkeys(incus.pushed, "file"), {})
    again = plant(restarted, "c1", ["aws", "gh"], home=tmp_path)
    assert [c.values for c in again] == [c.values for c in first] and not restarted.pushed
    # a registry written for another instance id proves nothing: files there are left alone
    restarted.instance.config["volatile.uuid"] = "uuid-8"
    assert plant(restarted, "c1", ["aws"], home=tmp_path) == [] and not restarted.pushed


def test_the_hook_warns_and_never_fails_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from coi_tui.sessions import canary_hook

    monkeypatch.setenv("COI_HOME", str(tmp_path))
    said: list[str] = []
    broken = FakeIncus(HOME_ONLY, {})

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("the files API said no")

    broken.push_file = refuse  # type: ignore[method-assign]
    settings = SimpleNamespace(
        monitoring_canaries=True,
        monitoring_canary_kinds=["aws"],
        monitoring_enabled=True,
        code_uid=1000,
    )
    manager = SimpleNamespace(incus=broken, settings=settings, say=said.append)
    ctx = SimpleNamespace(manager=manager, session=SimpleNamespace(container="c1"))
    canary_hook.HOOK.before_agent(ctx)  # type: ignore[arg-type]
    assert said == ["warning: canaries not planted: the files API said no"]
    settings.monitoring_enabled = False  # planted, and the user is told nothing watches them
    said.clear()
    canary_hook.HOOK.before_agent(ctx)  # type: ignore[arg-type]
    assert said[0].startswith("warning: [monitoring] canaries is on but enabled is off")
    settings.monitoring_canaries = False
    said.clear()
    canary_hook.HOOK.before_agent(ctx)  # type: ignore[arg-type]
    assert said == []
    assert canary.registry_path(tmp_path, "c1").exists()
    canary_hook.HOOK.container_ended(manager, "c1", removed=False)  # type: ignore[arg-type]
    assert canary.registry_path(tmp_path, "c1").exists()  # kept with a kept container
    canary_hook.HOOK.container_ended(manager, "c1", removed=True)  # type: ignore[arg-type]
    assert not canary.registry_path(tmp_path, "c1").exists()
