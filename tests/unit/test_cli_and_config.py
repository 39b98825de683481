"""The CLI surface without a daemon: usage errors, help, version speed, completion, config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coi_tui.cli.main import main, normalise_argv
from coi_tui.config import load_settings
from coi_tui.core.errors import CoiError

REPO = Path(__file__).resolve().parents[2]


def test_bare_coi_means_shell_and_resume_needs_equals() -> None:
    assert normalise_argv([]) == ["shell"]
    assert normalise_argv(["--slot", "2"]) == ["shell", "--slot", "2"]
    assert normalise_argv(["run", "--resume", "--", "x"]) == ["run", "--resume=auto", "--", "x"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--slot", "-1", "--", "true"],
        ["run", "--slot=11", "--", "true"],
        ["list", "--format", "xml"],
        ["shell", "--slot", "abc"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:")


def test_help_has_coi_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: coi") and "Available Commands:" in out
    for command in ("shell", "run", "attach", "list", "kill", "tmux", "build", "completion"):
        assert f"    {command}" in out


def test_version_does_not_import_pylxd_or_textual() -> None:
    code = (
        "import sys; from coi_tui.cli.main import main; main(['version']);"
        "print(sorted(m for m in ('pylxd', 'textual', 'requests') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("code-on-incus (coi) v0.1.0") and lines[-1] == "[]"


def coi(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own (argv handling, exit codes, stdout/stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "coi_tui.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_cobra_conventions() -> None:
    """COI's argument habits: extra words after `version` are ignored, session options may
    come before the command, and a bare word after `shell` hints at --resume=."""

    assert coi("version", "extra", "--flag").stdout.startswith("code-on-incus (coi) v")
    # exactly COI's two lines (scripts parse the first, COI's tests count them); which
    # implementation this is: in --json and --help
    for argv in (["version"], ["--version"]):
        lines = coi(*argv).stdout.splitlines()
        assert re.fullmatch(r"code-on-incus \(coi\) v\d+\.\d+\.\d+", lines[0]), lines
        assert lines[1:] == ["https://github.com/mensfeld/code-on-incus"], lines
    for argv in (["version", "--json"], ["version", "--format", "json"]):
        assert json.loads(coi(*argv).stdout)["implementation"] == "coi-tui"
    assert "coi-tui" in coi("version", "--help").stdout
    stray = coi("shell", "abc", "def")
    assert stray.returncode == 2 and "did you mean --resume=def?" in stray.stderr
    unknown = coi("shell", "abc")  # an alias nothing registered, in COI's words
    assert unknown.returncode == 1 and 'alias "abc" not found' in unknown.stderr
    bad_slot = coi("--slot", "11", "run", "--", "true")
    assert bad_slot.returncode == 2 and "slot" in bad_slot.stderr

    from coi_tui.cli.main import take_leading_options

    argv, leading = take_leading_options(["-w", "/x y", "--slot=2", "--resume=auto", "run", "--"])
    assert argv == ["run", "--"]
    assert leading == {"workspace": "/x y", "slot": "2", "resume": "auto"}
    assert take_leading_options(["-w", "/x"]) == (["-w", "/x"], {})


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "powershell"])
def test_completion_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    background = {"fish": "-l background", "powershell": "'--background'"}.get(
        shell, "--background"
    )
    assert "shell" in script and background in script
    if shell == "bash":
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    if shell == "powershell":  # no pwsh here: the table's quoting is checked by shape
        assert "Register-ArgumentCompleter -Native -CommandName coi" in script
        assert "'snapshot' = @(" in script and "'create'" in script


def test_config_files_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home).mkdir()
    (home / "config.toml").write_text('[container]\nimage = "from-user"\npersistent = true\n')
    project = tmp_path / "proj"
    (project / ".coi").mkdir(parents=True)
    (project / ".coi" / "config.toml").write_text('[container]\nimage = "from-project"\n')
    monkeypatch.setenv("COI_HOME", str(home))
    settings = load_settings(project, {"COI_HOME": str(home)})
    assert (settings.image, settings.persistent) == ("from-project", True)
    settings = load_settings(
        project, {"COI_HOME": str(home), "COI_IMAGE": "from-env", "COI_USE_DUMMY": "1"}
    )
    # COI_USE_DUMMY swaps only the agent's binary (sessions/manager.py), never the tool.
    assert (settings.image, settings.tool) == ("from-env", "claude")
    assert settings.sources["image"] == "$COI_IMAGE"


def test_malformed_toml_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text("[container\nimage=")
    with pytest.raises(CoiError, match=r"config\.toml: invalid TOML"):
        load_settings(tmp_path, {"COI_HOME": str(tmp_path)})
    (tmp_path / "config.toml").write_text("[container]\npersistent = 'maybe'\n")
    with pytest.raises(CoiError, match=r"\[container\] persistent: expected true or false"):
        load_settings(tmp_path, {"COI_HOME": str(tmp_path)})


def test_every_command_that_loads_settings_shows_the_old_spelling_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the loader never prints (its notes go to `say`): each command must pass stderr as `say`,
    # not only shell and run (`coi monitor rules list` loads the user's config, no Incus)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[defaults]\nimage = "old"\n')
    monkeypatch.setenv("COI_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["monitor", "rules", "list"]) == 0
    assert "[defaults] image is the pre-0.8 layout" in capsys.readouterr().err


def test_list_record_has_coi_shape_and_no_address_for_a_stopped_container() -> None:
    """`coi list`: created_at as COI prints it, and a stopped container shows no IPv4 even
    when a lease of its last run is still listed."""
    from coi_tui.cli.commands import instance_record
    from coi_tui.incus import Instance

    address = {"family": "inet", "scope": "global", "address": "10.0.0.7"}
    network = {"eth0": {"addresses": [address]}}
    running = Instance(
        "coi-abc-1", "Running", "2026-12-07T10:11:12.123456Z", state={"network": network}
    )
    stopped = Instance("coi-abc-2", "Stopped", "2026-12-07T10:11:12Z", state={"network": network})
    assert instance_record(running, "coi-")["ipv4"] == "10.0.0.7"
    assert instance_record(running, "coi-")["created_at"] == "2026-12-07 10:11:12"
    assert instance_record(stopped, "coi-")["ipv4"] == ""


def test_cobra_help_and_errors() -> None:
    """COI's help shape (Cobra's): `Flags:` and `Available Commands:` headings, the removed
    flags not shown, examples and aliases; a group given an unknown subcommand shows its
    help (exit 0); a missing argument shows the usage; an unknown flag says so."""

    shell = coi("shell", "--help").stdout
    assert "Flags:" in shell and "options:" not in shell and "ephemeral" in shell
    assert "--persistent" not in shell and "--image" not in shell and "--slot" in shell
    container = coi("container", "--help").stdout
    assert "Available Commands:" in container and "launch" in container
    persist = coi("persist", "--help").stdout
    assert "Examples:" in persist and "ephemeral" in persist and "--force" in persist
    assert re.search(r"Aliases:\s*\n\s*shutdown,\s*close", coi("close", "--help").stdout)
    assert "-f, --force" in coi("build", "--help").stdout
    assert "<session-name> <command>" in coi("tmux", "send", "--help").stdout
    assert "[session-id]" in coi("info", "--help").stdout
    unknown = coi("snapshot", "no-such-action")
    assert unknown.returncode == 0 and "Available Commands:" in unknown.stdout
    assert coi("no-such-command").returncode == 2  # the root still refuses
    missing = coi("container", "exists")
    assert missing.returncode == 2 and "Usage:" in missing.stderr
    flag = coi("container", "exec", "x", "--json", "--", "true")
    assert flag.returncode == 2 and "unknown flag: --json" in flag.stderr
