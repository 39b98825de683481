"""The rest of the COI surface on the real daemon: persist, clean, container, file, attach."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.config import load_settings
from coi_tui.incus import Incus
from coi_tui.network import netctl
from coi_tui.network.firewall import iface_for
from coi_tui.sessions.manager import SessionManager
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner
from tests.integration.test_sessions import start_background

pytestmark = pytest.mark.incus


def test_persist_then_poweroff_keeps_the_container(
    coi: CoiRunner, workspace: Path, incus: Incus, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = start_background(coi, workspace)
    result = coi.ok("persist", name)
    assert f"  ✓ Persisted {name}" in result.stdout and "Persisted 1 container(s)" in result.stdout
    listed = json.loads(coi.ok("list", "--json").stdout)["active_containers"]
    assert listed[0]["mode"] == "persistent"
    assert coi("persist").returncode == 1  # no names: COI's error from the command

    # Stop it from the host, as poweroff would; the session is finalized as persistent.
    incus.stop(name, timeout=10)

    monkeypatch.setenv("COI_HOME", str(coi.home))
    manager = SessionManager(incus, load_settings(), say=lambda _: None)
    outcome = manager.finalize_if_stopped(name)
    assert outcome == "kept"
    assert incus.status(name) == "Stopped"

    # A stopped persistent container is what `coi clean --all` removes (and plain clean keeps).
    assert "nothing to clean" in coi.ok("clean", "--force").stdout
    dry = coi.ok("clean", "--all", "--dry-run")
    assert name in dry.stdout and "dry run" in dry.stdout
    assert incus.instance_exists(name)
    assert coi("clean", "--all").returncode == 1  # not a terminal and no --force
    assert "Cleanup complete" in coi.ok("clean", "--all", "--force").stdout
    assert not incus.instance_exists(name)


def test_clean_sessions_removes_saved_sessions(coi: CoiRunner, workspace: Path) -> None:
    name = start_background(coi, workspace)
    coi.ok("kill", "--force", name)
    assert list((coi.home / "sessions-dummy").iterdir())
    assert "Cleanup complete" in coi.ok("clean", "--sessions", "--force").stdout
    assert not list((coi.home / "sessions-dummy").iterdir())


def test_container_subcommands(coi: CoiRunner, image: str, incus: Incus, tmp_path: Path) -> None:
    name = f"{coi.prefix}0000cafe-1"
    assert coi("container", "exists", name).returncode == 1
    coi.ok("container", "launch", image, name)
    assert coi("container", "exists", name).returncode == 0
    assert coi("container", "running", name).returncode == 0

    captured = coi.ok(
        "container",
        "exec",
        name,
        "--capture",
        "--cwd",
        "/",
        "--env",
        "X=42",
        "--",
        "sh",
        "-c",
        "echo $X; echo err >&2; exit 3",
    )
    assert json.loads(captured.stdout) == {"stdout": "42\n", "stderr": "err\n", "exit_code": 3}
    raw = coi(
        "container",
        "exec",
        name,
        "--capture",
        "--format",
        "raw",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "echo raw; exit 4",
    )
    assert (raw.returncode, raw.stdout) == (4, "raw\n")
    # a command that is not there: 127, as `incus exec` and COI say it
    missing = ("--cwd", "/", "--", "no-such-command-here")
    gone = coi("container", "exec", name, "--capture", "--format=raw", *missing)
    assert (gone.returncode, gone.stdout) == (127, "")
    gone_json = json.loads(coi.ok("container", "exec", name, "--capture", *missing).stdout)
    assert gone_json["exit_code"] == 127 and gone_json["stdout"] == ""
    unpaired = coi("container", "exec", name, "--format", "raw", "--", "true")
    assert unpaired.returncode == 2
    assert "--format flag requires --capture flag" in unpaired.stderr
    streamed = coi("container", "exec", name, "--user", "1000", "--cwd", "/", "--", "id", "-u")
    assert (streamed.returncode, streamed.stdout.strip()) == (0, "1000")

    mount_src = tmp_path / "extra"
    mount_src.mkdir()
    (mount_src / "hello.txt").write_text("mounted\n")
    coi.ok("container", "mount", name, "extra", str(mount_src), "/mnt/extra", "--no-shift")
    cat = coi.ok(
        "container", "exec", name, "--capture", "--cwd", "/", "--", "cat", "/mnt/extra/hello.txt"
    )
    assert json.loads(cat.stdout)["stdout"] == "mounted\n"

    listed = json.loads(coi.ok("container", "list", "--json").stdout)
    assert name in [c["name"] for c in listed]
    refused = coi("container", "delete", name)
    assert refused.returncode == 1 and "--force" in refused.stderr
    coi.ok("container", "stop", name, "--force")
    assert coi("container", "running", name).returncode == 1
    coi.ok("container", "delete", name)
    assert not incus.instance_exists(name)


def test_file_push_and_pull_recursive(coi: CoiRunner, workspace: Path, tmp_path: Path) -> None:
    name = start_background(coi, workspace)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("A")
    (tree / "sub" / "b.txt").write_text("B")
    needs_r = coi("file", "push", str(tree), f"{name}:/home/code/tree")
    assert needs_r.returncode == 2 and "source is a directory, use -r flag" in needs_r.stderr
    pushed = coi.ok("file", "push", "-r", str(tree), f"{name}:/home/code/tree")
    assert f"Pushed directory {tree} -> {name}:/home/code/tree" in pushed.stderr
    owner = coi.ok(
        "container",
        "exec",
        name,
        "--capture",
        "--",
        "stat",
        "-c",
        "%u",
        "/home/code/tree/sub/b.txt",
    )
    assert json.loads(owner.stdout)["stdout"].strip() == "1000"

    back = tmp_path / "back"
    pulled = coi.ok("file", "pull", "-r", f"{name}:/home/code/tree", str(back))
    assert f"Pulled directory {name}:/home/code/tree -> {back}" in pulled.stderr
    assert (back / "sub" / "b.txt").read_text() == "B"
    # an existing directory receives it under its own name; a second pull there is refused
    coi.ok("file", "pull", "-r", f"{name}:/home/code/tree", str(back))
    assert (back / "tree" / "a.txt").read_text() == "A"
    again = coi("file", "pull", "-r", f"{name}:/home/code/tree", str(back))
    assert again.returncode == 2 and "already exists" in again.stderr
    single = tmp_path / "single.txt"
    one = coi.ok("file", "pull", f"{name}:/home/code/tree/a.txt", str(single))
    assert f"Pulled file {name}:/home/code/tree/a.txt -> {single}" in one.stderr
    assert single.read_text() == "A"
    # a symlink at the destination is replaced, never written through
    kept = tmp_path / "kept.txt"
    kept.write_text("mine")
    link = tmp_path / "link.txt"
    link.symlink_to(kept)
    coi.ok("file", "pull", f"{name}:/home/code/tree/a.txt", str(link))
    assert kept.read_text() == "mine" and not link.is_symlink() and link.read_text() == "A"
    slash = coi("file", "pull", f"{name}:/home/code/tree/a.txt", f"{tmp_path}/nowhere/")
    assert slash.returncode == 2 and "trailing slash" in slash.stderr
    bad = coi("file", "pull", "no-colon-here", str(single))
    assert bad.returncode == 2 and "container:path" in bad.stderr


def test_attach_chooses_between_sessions(coi: CoiRunner, workspace: Path) -> None:
    """COI's attach: none running says so, several are listed (both exit 0, on stdout); a
    slot or name that is not running is COI's one error; without the agent's tmux session
    it points at --bash; without a terminal it says so at once."""
    none = coi("attach")
    assert none.returncode == 0 and none.stdout.strip() == "No active sessions"
    first = start_background(coi, workspace)
    second = start_background(coi, workspace)
    assert second == container_name(coi.prefix, str(workspace), 2)
    result = coi("attach")
    assert result.returncode == 0
    assert "Active sessions:" in result.stdout and f"  1. {first}" in result.stdout
    assert "Use: coi attach <container-name>" in result.stdout
    missing_slot = coi("attach", "--slot", "5", "-w", str(workspace))
    target = container_name(coi.prefix, str(workspace), 5)
    assert missing_slot.returncode == 1
    assert f"container {target} not found or not running" in missing_slot.stderr
    # Without a terminal it says so at once instead of streaming tmux's escapes forever.
    piped = coi("attach", first, timeout=30)
    assert piped.returncode == 1 and "needs a terminal" in piped.stderr
    chosen = coi("attach", timeout=30, env={"COI_CONTAINER": second})
    assert chosen.returncode == 1 and f"coi tmux capture {second}" in chosen.stderr
    # the agent's tmux session gone: COI's hint to open bash instead
    coi.ok("container", "exec", first, "--user", "1000", "--", "tmux", "kill-server")
    bare = coi("attach", first, timeout=30)
    assert bare.returncode == 0 and "No tmux session found in container." in bare.stderr
    assert f"coi attach {first} --bash" in bare.stderr


def test_timing_debug_breaks_a_run_down(coi: CoiRunner, workspace: Path, tmp_path: Path) -> None:
    """COI_TIMING_DEBUG prints every Incus call and process with its duration; the JSON twin
    holds the same spans, and the command's own output and exit code are untouched."""
    report = tmp_path / "timing.json"
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "echo ran; exit 3",
        env={"COI_TIMING_DEBUG": "1", "COI_TIMING_DEBUG_JSON": str(report)},
    )
    assert result.returncode == 3 and result.stdout == "ran\n"
    assert "[timing] total" in result.stderr
    data = json.loads(report.read_text())
    labels = [span["label"] for span in data["spans"]]
    assert any(label.startswith("POST /1.0/instances") for label in labels)
    assert any(label.startswith("coi-netctl apply") for label in labels)
    assert any(span["kind"] == "hook" for span in data["spans"])
    covered = sum(s["duration_ms"] for s in data["spans"] if s["depth"] == 0)
    assert 0 < covered <= data["total_ms"]
    # Off by default: no report.
    assert "[timing]" not in coi.ok("run", "-w", str(workspace), "--", "true").stderr


def test_run_env_flags_reach_the_command_over_the_config(coi: CoiRunner, workspace: Path) -> None:
    """`coi run -e VAR=value` (repeatable, COI's flag): the command sees each, over the
    config's [defaults.environment]; a malformed one is a usage error before anything runs."""
    config = coi.home / "config.toml"
    config.write_text(
        (config.read_text() if config.exists() else "")
        + '\n[defaults.environment]\nFROM_CONFIG = "config"\nBOTH = "config"\n'
    )
    shown = coi.ok(
        "run",
        "-w",
        str(workspace),
        "-e",
        "BOTH=flag",
        "-e",
        "SPACED=a b=c",
        "--",
        "sh",
        "-c",
        'echo "$FROM_CONFIG|$BOTH|$SPACED"',
    )
    assert shown.stdout.strip() == "config|flag|a b=c"
    for bad in ("NOEQUALS", "1X=2", "=v"):
        refused = coi("run", "-w", str(workspace), "-e", bad, "--", "true")
        assert refused.returncode == 2, (bad, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_list_shows_the_address_the_container_really_has(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """`coi list` reads addresses from the bridge's DHCP leases (cheap); they must match what
    the container itself reports."""
    from tests.integration.test_sessions import wait_for

    name = start_background(coi, workspace)
    wait_for(lambda: bool(incus.get_instance(name, with_state=True).ipv4), 60, "an address")
    real = incus.get_instance(name, with_state=True).ipv4
    listed = json.loads(coi.ok("list", "--json").stdout)["active_containers"]
    assert [(c["name"], c["ipv4"]) for c in listed] == [(name, real)]
    assert f"IPv4: {real}" in coi.ok("list").stdout


def test_confirmations_read_a_piped_answer(coi: CoiRunner, workspace: Path) -> None:
    """COI's [y/N] questions are answered on stdin, from a pipe too; only y/yes count."""
    name = start_background(coi, workspace)
    coi.ok("snapshot", "create", "s1", "-c", name)
    kept = coi("snapshot", "delete", "--all", "-c", name, input="n\n")  # --all asks (COI)
    assert kept.returncode == 0 and "[y/N]" in kept.stderr and "Aborted" in kept.stderr
    assert "s1" in coi.ok("snapshot", "list", "-c", name).stdout
    coi.ok("snapshot", "delete", "--all", "-c", name, input="yes\n")
    assert "s1" not in coi.ok("snapshot", "list", "-c", name).stdout

    # `kill --all` asks; a container named on the command line is killed at once (as COI)
    declined = coi("kill", "--all", input="n\n")
    assert declined.returncode == 0 and "Cancelled." in declined.stdout  # as COI
    assert f"  - {name}" in declined.stdout and "Kill all these containers?" in declined.stderr
    assert coi("container", "running", name).returncode == 0
    silent = coi("kill", "--all", input="")
    assert silent.returncode == 1 and "--force" in silent.stderr
    assert coi("container", "running", name).returncode == 0
    killed = coi.ok("kill", name, input="").stdout
    assert f"Killing container {name}..." in killed and f"✓ Killed {name}" in killed
    assert "Killed 1 container(s)" in killed
    assert "No containers to Kill" in coi.ok("kill", "--all").stdout
    # An unknown name is already gone: nothing to ask.
    assert "already gone" in coi.ok("kill", "coi-unknown-1", input="").stdout


def test_image_info_and_cleanup_keep_the_newest(
    coi: CoiRunner, incus: Incus, tmp_path: Path
) -> None:
    """Three tiny images under a test prefix: cleanup --keep 1 deletes the two oldest."""
    import io
    import tarfile
    import time

    prefix = f"{coi.prefix}img-"
    made: list[str] = []
    try:
        for index in range(3):
            tarball = tmp_path / f"image{index}.tar"
            with tarfile.open(tarball, "w") as tar:
                meta = (
                    f"architecture: x86_64\ncreation_date: {int(time.time()) + index}\n"
                    f"properties:\n  description: test image {index}\n"
                ).encode()
                info = tarfile.TarInfo("metadata.yaml")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
                root = tarfile.TarInfo("rootfs")
                root.type = tarfile.DIRTYPE
                tar.addfile(root)
                marker = f"{index}\n".encode()
                info = tarfile.TarInfo("rootfs/marker")
                info.size = len(marker)
                tar.addfile(info, io.BytesIO(marker))
            incus.import_image(tarball, f"{prefix}{index}", {"description": f"test {index}"})
            made.append(f"{prefix}{index}")

        info = json.loads(coi.ok("image", "info", f"{prefix}1", "--json").stdout)
        assert info["aliases"] == [f"{prefix}1"] and len(info["fingerprint"]) == 64
        listed = json.loads(coi.ok("images", "--all", "--prefix", prefix, "--json").stdout)
        assert sorted(a for r in listed for a in r["aliases"]) == made

        dry = coi.ok("image", "cleanup", prefix, "--keep", "1", "--dry-run").stdout
        assert dry.count("Would delete") == 2 and all(incus.image_exists(a) for a in made)
        cleaned = coi.ok("image", "cleanup", prefix, "--keep", "1").stderr
        assert [incus.image_exists(a) for a in made] == [False, False, True]
        assert "Cleanup complete:" in cleaned and "Deleted 2 old version(s):" in cleaned
        assert f"Kept 1 recent version(s):\n  - {prefix}2" in cleaned
        deleted = coi.ok("image", "delete", f"{prefix}2", input="")  # no question, as COI
        assert f"Image {prefix}2 deleted" in deleted.stderr and not incus.image_exists(made[2])
        none = coi.ok("image", "list", "--prefix", prefix).stdout
        assert none.strip() == f"No images found with prefix '{prefix}'"
        assert coi("image", "cleanup", prefix, "--keep", "0").returncode == 2
    finally:
        for alias in made:
            if incus.image_exists(alias):
                incus.delete_image(alias)


def test_snapshot_messages_and_stateful_guard(coi: CoiRunner, workspace: Path) -> None:
    name = start_background(coi, workspace)
    coi.ok("snapshot", "create", "s1", "-c", name)
    again = coi("snapshot", "create", "s1", "-c", name)
    assert again.returncode == 1
    assert f"snapshot 's1' already exists for container '{name}'" in again.stderr
    missing = coi("snapshot", "restore", "nope", "-c", name, "--force")
    assert f"snapshot 'nope' not found for container '{name}'" in missing.stderr
    stateful = coi("snapshot", "create", "s2", "--stateful", "-c", name)
    assert stateful.returncode == 1 and "migration.stateful=true" in stateful.stderr
    assert len(stateful.stderr.strip().splitlines()) == 1
    plain = coi("snapshot", "restore", "s1", "--stateful", "-c", name, "--force")
    assert plain.returncode == 1 and "not stateful" in plain.stderr
    # A group on its own prints its help, as COI (Cobra) does.
    group = coi("snapshot")
    assert group.returncode == 0 and "Usage: coi snapshot" in group.stdout


def test_shell_container_enters_an_existing_container(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """`coi shell --container NAME` takes the container as it is: restarted when stopped, its
    agent started again when its tmux session is gone."""
    name = start_background(coi, workspace, "--persistent")
    incus.stop(name, force=True)
    entered = coi.ok("shell", "--container", name, "--background")
    assert f"Container: {name}" in entered.stderr and incus.status(name) == "Running"
    assert (
        coi(
            "container",
            "exec",
            name,
            "--user",
            "1000",
            "--",
            "tmux",
            "has-session",
            "-t",
            f"coi-{name}",
        ).returncode
        == 0
    )
    missing = coi("shell", "--container", "coi-nope-1", "--background")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert coi("shell", "--tmux=false", "--background").returncode == 2


def test_untrusted_project_config_reaches_nothing_until_trusted(
    coi: CoiRunner, workspace: Path, incus: Incus, tmp_path: Path
) -> None:
    """A repository's .coi/config.toml cannot mount host paths or open the network on its
    own; `coi trust` approves exactly its mounts, never the downgrade."""
    outside = tmp_path / "host-secrets"
    outside.mkdir()
    (outside / "marker").write_text("host file\n")
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text(
        f'[network]\nmode = "open"\n[[mounts]]\nhost = "{outside}"\ncontainer = "/mnt/outside"\n'
    )
    probe = ["sh", "-c", "cat /mnt/outside/marker 2>/dev/null || echo ABSENT"]
    first = coi("run", "-w", str(workspace), "--", *probe, cwd=workspace)
    assert first.returncode == 0 and first.stdout.strip() == "ABSENT"
    assert "untrusted" in first.stderr and "coi trust" in first.stderr
    shell = coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace), cwd=workspace)
    name = next(x for x in shell.stderr.splitlines() if x.startswith("Container: "))[11:]
    assert incus.get_instance(name).config.get("user.coi.network.mode") == "restricted"
    coi.ok("kill", "--force", name)

    approved = coi("trust", "--force", cwd=workspace)
    assert approved.returncode == 0 and f"mount {outside} -> /mnt/outside" in approved.stdout
    second = coi("run", "-w", str(workspace), "--", *probe, cwd=workspace)
    assert second.stdout.strip() == "host file"
    assert "weakens the sandbox" in second.stderr  # the open mode stays ignored


def test_persist_marks_every_session_record_naming_the_container(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """As COI: a container started some other way (`coi container launch`) still gets the
    session records naming it marked persistent, other fields kept."""
    name = container_name(coi.prefix, str(workspace), 1)
    coi.ok("container", "launch", load_settings().image, name)
    record = coi.home / "sessions-claude" / "0b5e1d2c-aaaa-4bbb-8ccc-000000000001"
    record.mkdir(parents=True)
    (record / "metadata.json").write_text(
        json.dumps(
            {
                "session_id": record.name,
                "container_name": name,
                "persistent": False,
                "workspace": str(workspace),
                "saved_at": "2026-12-07T10:00:00Z",
            }
        )
    )
    result = coi.ok("persist", name)
    assert "Persisted 1 container(s)" in result.stdout
    data = json.loads((record / "metadata.json").read_text())
    assert data["persistent"] is True and data["saved_at"] == "2026-12-07T10:00:00Z"
    assert "(persistent)" in coi.ok("list").stdout


def test_a_launched_container_gets_an_address_and_the_session_rules(
    coi: CoiRunner, workspace: Path
) -> None:
    """`coi container launch` (COI's list tests start containers this way): on the coi bridge
    with the session's network rules, its IPv4 listed while it runs and not once stopped; the
    rules go with `container delete`."""
    name = container_name(coi.prefix, str(workspace), 1)
    coi.ok("container", "launch", load_settings().image, name)
    assert iface_for(name) in netctl.interfaces(netctl.table_state())

    def listed() -> dict[str, object]:
        rows = json.loads(coi.ok("list", "--format=json").stdout)["active_containers"]
        return next(row for row in rows if row["name"] == name)

    deadline = time.monotonic() + 60
    while not listed()["ipv4"] and time.monotonic() < deadline:
        time.sleep(0.5)  # DHCP in a booting container
    assert str(listed()["ipv4"]).startswith(("10.", "172.", "192.168.")), listed()
    coi.ok("container", "stop", name)
    assert listed()["ipv4"] == ""
    coi.ok("container", "delete", name, "--force")
    assert iface_for(name) not in netctl.interfaces(netctl.table_state())


def wait_for_text(coi: CoiRunner, name: str, text: str) -> str:
    deadline = time.monotonic() + 30
    pane = ""
    while time.monotonic() < deadline:
        pane = coi.ok("tmux", "capture", name).stdout
        if text in pane:
            break
        time.sleep(0.2)
    return pane


def test_tmux_helpers_reach_a_session_coi_did_not_start(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """As COI (#588): `coi tmux send/capture/list` run tmux as the code user (its uid read
    from the container when not recorded), never as root; a session root made with `coi
    container exec` (root by default) is still reached."""
    name = container_name(coi.prefix, str(workspace), 1)
    coi.ok("container", "launch", load_settings().image, name)
    session = f"coi-{name}"
    as_code = ["--user", "1000", "--group", "1000"]
    coi.ok("container", "exec", name, *as_code, "--", "tmux", "new-session", "-d", "-s", session)
    sent = coi.ok("tmux", "send", name, "echo CODE_USER_MARKER")
    assert f"Sent command to session {session}" in sent.stdout
    assert "CODE_USER_MARKER" in wait_for_text(coi, name, "CODE_USER_MARKER")
    listed = coi.ok("tmux", "list").stdout
    assert f"  - {name} (tmux session: {session})" in listed
    no_root = coi("container", "exec", name, "--", "test", "!", "-e", "/tmp/tmux-0")
    assert no_root.returncode == 0, "a helper ran tmux as root"

    coi.ok("container", "exec", name, *as_code, "--", "tmux", "kill-server")
    coi.ok("container", "exec", name, "--", "tmux", "new-session", "-d", "-s", session)
    coi.ok("tmux", "send", name, "echo ROOT_SESSION_MARKER")
    assert "ROOT_SESSION_MARKER" in wait_for_text(coi, name, "ROOT_SESSION_MARKER")


@pytest.fixture
def spare_pool(incus: Incus, run_prefix: str) -> Iterator[str]:
    name = f"{run_prefix}pool"
    subprocess.run(["incus", "storage", "create", name, "dir"], check=True, capture_output=True)
    yield name
    for instance in incus.list_instances(run_prefix):
        if instance.expanded_devices.get("root", {}).get("pool") == name:
            incus.delete_instance(instance.name, force=True)
    subprocess.run(["incus", "storage", "delete", name], check=False, capture_output=True)


def test_clean_pools_removes_coi_containers_of_unnamed_pools_only(
    coi: CoiRunner, workspace: Path, incus: Incus, spare_pool: str
) -> None:
    """As COI: `clean --pools` lists coi containers in a pool no config or profile names,
    under a warning; --dry-run changes nothing; a profile naming the pool keeps it out;
    --force deletes the containers and never the pool."""
    stray = f"{coi.prefix}stray-in-pool"
    # an empty instance: what is in it does not matter, and an image copy into a new dir pool
    # costs ~20 s
    subprocess.run(
        ["incus", "init", "--empty", stray, "-s", spare_pool], check=True, capture_output=True
    )
    dry = coi.ok("clean", "--pools", "--dry-run", "--workspace", str(workspace), cwd=workspace)
    assert "WARNING" in dry.stdout and "other" in dry.stdout and "projects" in dry.stdout
    assert f"    - {stray}" in dry.stdout and incus.instance_exists(stray)

    profile = workspace / ".coi" / "profiles" / "elsewhere"
    profile.mkdir(parents=True)
    (profile / "config.toml").write_text(f'[container]\nstorage_pool = "{spare_pool}"\n')
    named = coi.ok("clean", "--pools", "--dry-run", cwd=workspace)
    assert stray not in named.stdout and "no unreferenced pools" in named.stdout
    (profile / "config.toml").unlink()

    done = coi.ok("clean", "--pools", "--force", "--workspace", str(workspace), cwd=workspace)
    assert f"Deleting container {stray} (pool {spare_pool})..." in done.stdout
    assert not incus.instance_exists(stray)
    pools = {p["name"] for p in incus.list_storage_pools()}
    assert spare_pool in pools


def test_the_workspaces_project_config_counts_from_anywhere(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    """As COI: `coi run -w DIR` reads DIR/.coi/config.toml (untrusted, as ever) even when run
    from another directory."""
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text('[container]\nimage = "coi-no-such-image"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = coi("run", "--workspace", str(workspace), "echo", "test", cwd=elsewhere)
    assert result.returncode != 0
    assert "coi-no-such-image" in result.stderr and "not found" in result.stderr.lower()


def test_container_exec_checks_its_flags_first_and_list_has_a_header(coi: CoiRunner) -> None:
    both = coi("container", "exec", "no-such-container", "--tty", "--capture", "--", "true")
    assert both.returncode == 2 and "mutually exclusive" in both.stderr
    assert coi.ok("container", "list").stdout.splitlines()[0].split() == ["NAME", "STATUS"]


def test_coi_six_s_image_name_launches_the_default_image(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """COI's older tests launch image "coi" (0.6's name of the default image): `coi build`
    (run by make test's setup) keeps it as an alias of coi-default."""
    default = load_settings().image
    assert incus.get_image("coi").fingerprint == incus.get_image(default).fingerprint
    name = container_name(coi.prefix, str(workspace), 1)
    coi.ok("container", "launch", "coi", name)
    assert coi("container", "running", name).returncode == 0
