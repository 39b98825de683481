"""Config keys on the real daemon: protected paths (files and directories, git placeholders),
secret masking, coi build --all, [defaults.env_commands], [[credentials]] and [[sockets]]."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


def test_protected_files_placeholders_and_secret_masks(coi: CoiRunner, workspace: Path) -> None:
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (workspace / ".claude").mkdir()
    (workspace / ".claude" / "settings.json").write_text("{}\n")
    (workspace / ".env").write_text("TOKEN=secret\n")
    (workspace / "secrets").mkdir()
    (workspace / "secrets" / "key.pem").write_text("PRIVATE\n")
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text(
        '[security]\nsecret_paths = [".env", "secrets/**"]\n'
    )
    script = (
        "echo '{\"hooks\":1}' > .claude/settings.json; echo settings=$?;"
        "echo evil > .git/hooks/pre-commit; echo hooks=$?;"
        "echo x >> .git/info/attributes; echo attributes=$?;"
        "echo x > .coi/config.toml; echo coi=$?;"
        "echo env=$(cat .env | wc -c); echo secrets=$(ls -A secrets | wc -l);"
        "echo y > .env; echo envwrite=$?;"
        "echo ok > notes.txt; echo source=$?"
    )
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", script, cwd=workspace)
    assert result.returncode == 0, result.stderr
    codes = dict(line.split("=", 1) for line in result.stdout.split())
    assert codes["settings"] != "0" and codes["hooks"] != "0"
    assert codes["attributes"] != "0" and codes["coi"] != "0"
    assert codes["env"] == "0" and codes["secrets"] == "0"  # masked: empty inside
    assert codes["envwrite"] != "0" and codes["source"] == "0"
    assert (workspace / ".claude" / "settings.json").read_text() == "{}\n"
    assert (workspace / ".env").read_text() == "TOKEN=secret\n"
    assert (workspace / ".git" / "hooks").is_dir()  # placeholders created on the host
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert (workspace / ".git" / "info" / "attributes").read_text() == ""


def test_env_commands_credentials_and_sockets(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    import socket
    import threading

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    sock_path = tmp_path / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"hello from the host\n")

    threading.Thread(target=serve, daemon=True).start()
    (coi.home / "config.toml").write_text(
        '[defaults.env_commands]\nFROM_HOST = "echo host-$((1 + 1))"\n'
        f'[[credentials]]\nhost = "{token}"\ncontainer = "/home/code/.config/tool/token"\n'
        'mode = "0640"\n'
        '[[credentials]]\nbundle = "ollama"\n'
        f'[[sockets]]\nhost = "{sock_path}"\ncontainer = "/run/coi-test/host.sock"\n'
        'env = "TEST_SOCK"\n'
    )
    script = (
        'echo "env=$FROM_HOST"; echo "sockenv=$TEST_SOCK";'
        'echo "token=$(cat ~/.config/tool/token) $(stat -c %a:%U ~/.config/tool/token)";'
        'python3 -c "import socket; s=socket.socket(socket.AF_UNIX); '
        "s.connect('/run/coi-test/host.sock'); print('sock=' + s.recv(100).decode().strip())\""
    )
    host_home = tmp_path / "host-home"  # no ollama key there: the bundle skips both files
    host_home.mkdir()
    result = coi(
        "run", "-w", str(workspace), "--", "sh", "-c", script, env={"HOME": str(host_home)}
    )
    server.close()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "env=host-2" in lines and "sockenv=/run/coi-test/host.sock" in lines
    assert "token=s3cret 640:code" in lines
    assert "sock=hello from the host" in lines
    assert "Copying ollama credentials from the host" in result.stderr
    assert "Skipping .ollama/id_ed25519 (not found on host)" in result.stderr
    (coi.home / "config.toml").write_text('[defaults.env_commands]\nX = "exit 3"\n')
    failed = coi("run", "-w", str(workspace), "--", "true")
    assert failed.returncode == 1 and 'env_commands X: "exit 3" failed with exit 3' in failed.stderr


def test_ports_map_publishes_a_container_port_on_the_host(coi: CoiRunner, workspace: Path) -> None:
    import socket
    import threading
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (coi.home / "config.toml").write_text(
        f'[[ports.map]]\nname = "web"\ncontainer = 3000\nhost = {port}\n'
    )
    got: list[bytes] = []

    def client() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not got:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                    data = conn.recv(100)
                    if data:
                        got.append(data)
            except OSError:
                pass
            time.sleep(0.3)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    server = (
        "import socket; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.bind(('127.0.0.1', 3000)); s.listen(5); s.settimeout(50); "
        "c, _ = s.accept(); c.sendall(b'hi from the container'); c.close()"
    )
    result = coi("run", "-w", str(workspace), "--", "python3", "-c", server)
    thread.join(5)
    assert result.returncode == 0, result.stderr
    assert got == [b"hi from the container"]
