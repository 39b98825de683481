"""A project's profiles are untrusted (issue 16, class 7): they cannot replace a built-in
profile, their context file and build script stay in their own folder, a build from them
cannot publish over an image they did not create, and a build container gets the session's
network rules. Pure logic, with a fake Incus and firewall: no daemon, no image build."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coi_tui.config import load_settings, trust
from coi_tui.config.build import (
    BUILT_BY_PROPERTY,
    Builder,
    build_profile_image,
    builder_for,
    check_owner,
)
from coi_tui.config.profiles import ProfileSet, read_context
from coi_tui.core.errors import CoiError
from coi_tui.network.isolation import BuildNetwork


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("COI_HOME", str(home))
    monkeypatch.delenv("COI_CONFIG", raising=False)
    monkeypatch.delenv("COI_TRUST_ALL", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "COI_TRUST_ALL"}
    return home, repo, env


def profile(base: Path, name: str, text: str) -> Path:
    folder = base / "profiles" / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(text)
    return folder


# ---------------------------------------------------------------------- built-in names
@pytest.mark.parametrize("trust_all", [False, True])
def test_a_project_profile_cannot_replace_a_builtin(
    dirs: tuple[Path, Path, dict[str, str]], trust_all: bool
) -> None:
    _home, repo, env = dirs
    env = {**env, "COI_TRUST_ALL": "1"} if trust_all else env  # a name, not a permission
    profile(
        repo / ".coi", "hardened", '[network]\nmode = "allowlist"\n[monitoring]\nenabled = true\n'
    )
    profile(repo / ".coi", "default", "[container]\nimage = 'evil'\n")
    settings = load_settings(repo, env, profile="hardened")
    assert settings.source("network.mode") == "profile hardened (built-in)"
    assert settings.max_duration == "4h"  # the preset, not the repository's folder
    assert load_settings(repo, env, profile="default").image == "coi-default"
    ignored = trust.REPORTS[f"{repo}#profile:hardened"].ignored
    assert ignored == ['profile "hardened" (a project cannot replace the built-in profile)']
    assert [p.name for p in ProfileSet.discover(repo, env).ignored] == ["default", "hardened"]


def test_the_users_own_profile_still_replaces_a_builtin(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, repo, env = dirs
    profile(home, "hardened", "[limits.runtime]\nmax_duration = '1h'\n")
    profile(repo / ".coi", "hardened", "[limits.runtime]\nmax_duration = '9h'\n")
    assert load_settings(repo, env, profile="hardened").max_duration == "1h"


def test_profile_create_refuses_a_builtin_name_in_the_project(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, repo, env = dirs
    with pytest.raises(CoiError, match="a project cannot replace it"):
        ProfileSet.discover(repo, env).create("hardened", scope="project", cwd=repo, env=env)
    assert not (repo / ".coi" / "profiles" / "hardened").exists()
    made = ProfileSet.discover(repo, env).create("hardened", scope="user", cwd=repo, env=env)
    assert made == home / "profiles" / "hardened"


# ---------------------------------------------------------------------- context and build.sh
def hostile_context(repo: Path, tmp_path: Path, how: str) -> Path:
    secret = tmp_path / "host-secret"
    secret.write_text("HOST-PRIVATE-KEY\n")
    folder = profile(repo / ".coi", "evil", "")
    if how == "absolute":
        (folder / "config.toml").write_text(f'context = "{secret}"\n')
    elif how == "relative":
        (folder / "config.toml").write_text('context = "../../../../host-secret"\n')
    elif how == "symlink":
        (folder / "CONTEXT.md").symlink_to(secret)
    elif how == "folder":  # the profile's folder itself leads out of the repository
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "config.toml").write_text('context = "CONTEXT.md"\n')
        (outside / "CONTEXT.md").write_text("HOST-PRIVATE-KEY\n")
        (folder / "config.toml").unlink()
        folder.rmdir()
        folder.symlink_to(outside)
    elif how == "script":
        (folder / "config.toml").write_text(f'[container.build]\nscript = "{secret}"\n')
    return secret


@pytest.mark.parametrize("how", ["absolute", "relative", "symlink", "folder", "script"])
@pytest.mark.parametrize("trust_all", [False, True])
def test_a_project_profile_cannot_name_a_host_file(
    dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path, how: str, trust_all: bool
) -> None:
    _home, repo, env = dirs
    env = {**env, "COI_TRUST_ALL": "1"} if trust_all else env
    hostile_context(repo, tmp_path, how)
    with pytest.raises(
        CoiError, match=r'project profile "evil": its .* (must be inside|leads out)'
    ):
        load_settings(repo, env, profile="evil")


def test_a_context_inside_the_profile_folder_is_fine_and_a_users_may_be_anywhere(
    dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    home, repo, env = dirs
    folder = profile(repo / ".coi", "team", 'context = "docs/rules.md"\n')
    (folder / "docs").mkdir()
    (folder / "docs" / "rules.md").write_text("run make lint\n")
    settings = load_settings(repo, env, profile="team")
    assert read_context(settings.profile_context) == "run make lint\n"
    notes = tmp_path / "notes.md"
    notes.write_text("mine\n")
    profile(home, "mine", f'context = "{notes}"\n')  # trusted: the user's own file
    assert read_context(load_settings(repo, env, profile="mine").profile_context) == "mine\n"


def test_read_context_refuses_a_swapped_symlink_a_fifo_and_a_huge_file(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("HOST-PRIVATE-KEY\n")
    checked = folder / "CONTEXT.md"
    checked.symlink_to(secret)  # swapped in after the check: a final symlink is not followed
    with pytest.raises(CoiError, match="symbolic link"):
        read_context(str(checked))
    # A folder on the way swapped for a symlink: what was opened is not what was checked.
    real = tmp_path / "real"
    real.mkdir()
    (real / "CONTEXT.md").write_text("HOST-PRIVATE-KEY\n")
    moved = tmp_path / "moved"
    moved.symlink_to(real)
    with pytest.raises(CoiError, match="moved while being opened"):
        read_context(str(moved / "CONTEXT.md"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CoiError, match="not a regular file"):
        read_context(str(fifo))
    huge = tmp_path / "huge"
    with open(huge, "wb") as handle:
        handle.truncate(1 << 30)
    with pytest.raises(CoiError, match="larger than"):
        read_context(str(huge))


# ---------------------------------------------------------------------- publishing
@dataclass
class FakeImage:
    fingerprint: str
    properties: dict[str, str] = field(default_factory=dict)


class FakeIncus:
    """Enough of Incus for build_profile_image; records the calls in order."""

    def __init__(self, images: dict[str, FakeImage], bridge: bool = True) -> None:
        self.images = images
        self.bridge = bridge
        self.calls: list[tuple[str, Any]] = []

    def image_exists(self, alias: str) -> bool:
        return alias in self.images

    def get_image(self, alias: str) -> FakeImage:
        return self.images[alias]

    def require_image(self, alias: str) -> None:
        assert alias in self.images

    def get_network(self, name: str) -> dict[str, Any] | None:
        return {"config": {"ipv4.address": "10.9.8.1/24"}} if self.bridge else None

    def create_instance(self, name: str, image: str, **kwargs: Any) -> None:
        self.calls.append(("create", kwargs["devices"]))

    def start(self, name: str) -> None:
        self.calls.append(("start", name))

    def push_file(self, name: str, path: str, content: bytes, **kwargs: Any) -> None:
        self.calls.append(("push", content))

    def exec_stream(self, name: str, argv: list[str], **kwargs: Any) -> int:
        self.calls.append(("exec", argv))
        return 0

    def stop(self, name: str, timeout: int) -> None:
        self.calls.append(("stop", name))

    def publish(self, name: str, alias: str, properties: dict[str, str], **kwargs: Any) -> str:
        self.calls.append(("publish", alias))
        self.images[alias] = FakeImage("new", dict(properties))
        return "new"

    def request(self, method: str, path: str) -> None:
        self.calls.append((method, path))

    def delete_instance(self, name: str, force: bool) -> None:
        self.calls.append(("delete", name))


class FakeFirewall:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def apply(self, container: str, policy: Any) -> None:
        self.calls.append(("rules", policy))

    def remove(self, container: str) -> None:
        self.calls.append(("unrules", container))


REPO_BUILDER = Builder("project /r profile tools", trusted=False)


@pytest.mark.parametrize("alias", ["coi-default", "coi-lean"])
def test_a_repository_cannot_take_cois_own_images(alias: str) -> None:
    incus = FakeIncus({})  # absent: not even the first to publish it
    with pytest.raises(CoiError, match="coi's own image"):
        check_owner(incus, alias, REPO_BUILDER, "tools")  # type: ignore[arg-type]
    check_owner(incus, alias, Builder("user profile tools", True), "tools")  # type: ignore[arg-type]


def test_a_repository_replaces_only_the_image_it_built() -> None:
    incus = FakeIncus(
        {
            "theirs": FakeImage("a", {BUILT_BY_PROPERTY: "project /other profile tools"}),
            "manual": FakeImage("b"),
            "mine": FakeImage("c", {BUILT_BY_PROPERTY: REPO_BUILDER.label}),
        }
    )
    with pytest.raises(CoiError, match=r'replace image "theirs", which was built by project /oth'):
        check_owner(incus, "theirs", REPO_BUILDER, "tools")  # type: ignore[arg-type]
    with pytest.raises(CoiError, match="built outside coi"):
        check_owner(incus, "manual", REPO_BUILDER, "tools")  # type: ignore[arg-type]
    check_owner(incus, "mine", REPO_BUILDER, "tools")  # type: ignore[arg-type]
    check_owner(incus, "new-name", REPO_BUILDER, "tools")  # type: ignore[arg-type]


def test_who_builds_follows_where_the_recipe_came_from(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, repo, env = dirs
    profile(home, "mine", "[container]\nimage = 'x'\n")
    settings = load_settings(repo, env, profile="mine")
    assert builder_for(settings, "mine", ["user"], repo).trusted
    assert not builder_for(settings, "mine", ["user", "project"], repo).trusted
    # The user's profile, with the build script from the repository's .coi/config.toml.
    (repo / ".coi").mkdir()
    (repo / ".coi" / "config.toml").write_text("[container.build]\ncommands = ['id']\n")
    settings = load_settings(repo, env, profile="mine")
    builder = builder_for(settings, "mine", ["user"], repo)
    assert builder == Builder(f"project {repo} profile mine", trusted=False)


def test_the_build_records_its_builder_and_gets_the_session_rules(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    """The build container's NIC is named and hardened like a session's, its restricted rules
    exist before it starts and go when it is gone; the image says who built it."""
    home, repo, env = dirs
    profile(
        home, "tools", "[container]\nimage = 'tools-img'\n[container.build]\ncommands = ['id']\n"
    )
    settings = load_settings(repo, env, profile="tools")
    incus = FakeIncus({settings.build_base: FakeImage("base")})
    firewall = FakeFirewall(incus.calls)
    said: list[str] = []
    build_profile_image(
        incus,  # type: ignore[arg-type]
        settings,
        "tools",
        alias=None,
        force=False,
        builder=REPO_BUILDER,
        network_for=lambda name: BuildNetwork(
            incus, settings, name, say=said.append, firewall=firewall
        ),  # type: ignore[arg-type]
        say=said.append,
    )
    assert said[-1].startswith("Image tools-img ready")
    order = [call[0] for call in incus.calls]
    assert order.index("create") < order.index("rules") < order.index("start")
    assert order.index("delete") < order.index("unrules")
    devices = dict(incus.calls)["create"]
    nic = devices["eth0"]
    assert nic["host_name"].startswith("coiv") and nic["security.mac_filtering"] == "true"
    assert nic["security.port_isolation"] == "true" and nic["security.ipv4_filtering"] == "true"
    policy = dict(incus.calls)["rules"]
    assert policy.mode == "restricted" and policy.block_private and policy.block_metadata
    assert not policy.allow_local and policy.gateway == "10.9.8.1"
    assert incus.images["tools-img"].properties[BUILT_BY_PROPERTY] == REPO_BUILDER.label


def test_without_the_coi_bridge_the_build_has_no_network(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    """An Incus profile's NIC would be unfiltered: it is masked (restricted mode)."""
    _home, repo, env = dirs
    settings = load_settings(repo, env)
    incus = FakeIncus({}, bridge=False)
    network = BuildNetwork(incus, settings, "c", say=print, firewall=FakeFirewall(incus.calls))  # type: ignore[arg-type]
    assert network.devices() == {"eth0": {"type": "none"}}
    network.before_start()
    assert incus.calls == []


def test_a_build_fails_closed_when_the_rules_cannot_be_applied(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    _home, repo, env = dirs
    settings = load_settings(repo, env)

    class Broken(FakeFirewall):
        def apply(self, container: str, policy: Any) -> None:
            raise CoiError("network isolation: nft: no")

    incus = FakeIncus({})
    network = BuildNetwork(incus, settings, "c", say=print, firewall=Broken(incus.calls))  # type: ignore[arg-type]
    network.devices()
    with pytest.raises(CoiError, match="fails closed in restricted mode"):
        network.before_start()
    network.close()
    assert incus.calls == []  # nothing applied, nothing to remove


def test_a_build_script_from_the_project_config_stays_in_its_folder(
    dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """The user's own profile, built in a repository whose .coi/config.toml names the script:
    a host file there would be pushed into the build container (and the published image)."""
    home, repo, env = dirs
    profile(home, "mine", "[container]\nimage = 'x'\n")
    (repo / ".coi").mkdir()
    secret = tmp_path / "host-secret"
    secret.write_text("HOST-PRIVATE-KEY\n")
    (repo / ".coi" / "config.toml").write_text(f"[container.build]\nscript = '{secret}'\n")
    settings = load_settings(repo, env, profile="mine")
    with pytest.raises(CoiError, match=r"the build script must be inside .*; the file was not"):
        builder_for(settings, "mine", ["user"], repo)
    (repo / ".coi" / "build.sh").write_text("true\n")
    (repo / ".coi" / "config.toml").write_text("[container.build]\nscript = 'build.sh'\n")
    settings = load_settings(repo, env, profile="mine")
    assert not builder_for(settings, "mine", ["user"], repo).trusted
