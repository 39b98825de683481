"""Session lifecycle: pick a slot, create or reuse the container, start the agent in tmux, and
save/clean up on every way a session ends. Plain Python over the Incus adapter (no UI)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

from coi_tui.config import Settings
from coi_tui.config.build import stale_image
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import file_lock
from coi_tui.core.paths import logs_dir
from coi_tui.incus import ExecResult, Incus, IncusError, Instance, InstanceNotFound
from coi_tui.incus.provision import subid_allows
from coi_tui.monitor.config import KILLED_BY_MONITOR, KILLED_KEY
from coi_tui.sessions import aliases
from coi_tui.sessions.hooks import run_hooks
from coi_tui.sessions.hookspec import LaunchContext, LaunchRequest, Say, Session
from coi_tui.sessions.naming import (
    container_name,
    parse_container_name,
    tmux_session,
    workspace_hash,
)
from coi_tui.sessions.slots import choose_slot, occupied_slots, slot_lock
from coi_tui.sessions.store import SessionMeta, SessionStore, now_rfc3339
from coi_tui.tools import Tool, get_tool
from coi_tui.tools.base import SANDBOX_CONTEXT, WORKSPACE, tool_options

CODE_HOME = "/home/code"
SAFE_TERMS = (
    "xterm-256color",
    "xterm",
    "screen-256color",
    "screen",
    "tmux-256color",
    "tmux",
    "linux",
    "vt100",
    "vt220",
    "dumb",
)


def sanitize_term(term: str | None) -> str:
    """A TERM the image has terminfo for (kitty, foot, ... are not)."""
    if term in SAFE_TERMS:
        return str(term)
    return "xterm-256color"


def delegated_id(host_id: int, path: str) -> bool:
    """A host id given to root one by one (`root:<id>:1`, what `coi setup --user` writes):
    an id inside root's container ranges is some container's, never a project owner's."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return False
    return any(line.strip() == f"root:{host_id}:1" for line in lines)


def warn_old_kernel(say: Say, release: str | None = None) -> bool:
    """Kernels before 5.15 lack pieces of the isolation we rely on: say so, do not refuse."""
    import platform

    release = release or platform.release()
    parts = release.split("-")[0].split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return False
    if version < (5, 15):
        say(
            f"warning: kernel {release} is older than 5.15; idmapped mounts and some isolation "
            "features may be missing (see 'coi health')"
        )
        return True
    return False


def pwd_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve_workspace(path: str, remote: str | None = None, say: Say | None = None) -> str:
    """The workspace as an absolute path. For a session on `remote` (a remote's name) it is
    a path on that host, which we cannot look at from here: `say` gets a note when it does
    not exist on this machine."""
    workspace = os.path.abspath(os.path.expanduser(path))
    if remote:
        if not os.path.isdir(workspace) and say is not None:
            say(
                f"note: {workspace} does not exist on this machine; remote '{remote}' mounts "
                "that path from its own disk, so it must exist there"
            )
        return workspace
    if not os.path.exists(workspace):
        raise CoiError(f"workspace '{workspace}' does not exist: create it or pass -w PATH")
    if not os.path.isdir(workspace):
        raise CoiError(f"workspace '{workspace}' is not a directory")
    return workspace


def exposes_home(workspace: str) -> bool:
    """The workspace is the user's home directory or an ancestor of it: mounting it hands the
    agent ~/.ssh, ~/.aws, the shell's startup files and every other secret there."""
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(workspace)
    return home == real or home.startswith(real.rstrip("/") + "/")


class SessionManager:
    def __init__(self, incus: Incus, settings: Settings, say: Say) -> None:
        self.incus = incus
        self.settings = settings
        self.say = say
        self.mount_points: dict[str, str] = {}  # container -> its workspace's path inside

    # ------------------------------------------------------------------ container shape
    def idmap(self, workspace: str) -> tuple[dict[str, str], dict[str, str]]:
        """(instance config, workspace device extras) so files written by `code` belong to the
        host user. raw.idmap maps only `code`: container root stays an unprivileged host uid on
        the workspace, so it can neither write host-root files nor make a setuid-root one (an
        idmapped mount, shift, would map container root to host root there: only on request,
        COI_IDMAP=shift, and for remotes). Run as root, `code` works as the workspace's owner,
        which must then be a delegated user; root's own projects map `code` to root."""
        mode = os.environ.get("COI_IDMAP", "auto")
        uid, gid, code = os.getuid(), os.getgid(), self.settings.code_uid
        if self.incus.remote is not None:
            # Our uid means nothing on another host: files keep the agent's uid there.
            return {}, {"shift": "true"}
        if mode == "shift":
            return {}, {"shift": "true"}
        if uid == 0:
            try:
                owner = os.stat(workspace)
            except OSError:
                owner = None
            if owner is not None and owner.st_uid != 0:
                # never host root for a user's project: the agent works as its owner
                if not (
                    delegated_id(owner.st_uid, "/etc/subuid")
                    and delegated_id(owner.st_gid, "/etc/subgid")
                ):
                    raise CoiError(
                        f"workspace {workspace} belongs to uid {owner.st_uid}: run 'coi setup "
                        f"--user {pwd_name(owner.st_uid)}' once so the agent can work as that "
                        "user (coi will not give it host root over someone else's files)"
                    )
                uid, gid = owner.st_uid, owner.st_gid
        elif not (subid_allows(uid, "/etc/subuid") and subid_allows(gid, "/etc/subgid")):
            raise CoiError(
                f"Incus may not map your uid {uid} into containers yet: run "
                f"'sudo coi setup --user {pwd_name(uid)}' once (it adds root:{uid}:1 to "
                "/etc/subuid and /etc/subgid, so only the agent is mapped to you)"
            )
        return {"raw.idmap": f"uid {uid} {code}\ngid {gid} {code}"}, {}

    def storage_pool(self) -> str:
        if self.settings.storage_pool:
            return self.settings.storage_pool
        pools = {p["name"] for p in self.incus.list_storage_pools()}
        return "coi" if "coi" in pools else ""

    def instance_spec(
        self, req: LaunchRequest, slot: int, session_id: str
    ) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        idmap_config, ws_extra = self.idmap(req.workspace)
        config = {
            "user.coi.managed": "true",
            "user.coi.workspace": req.workspace,
            "user.coi.slot": str(slot),
            "user.coi.persistent": "true" if req.persistent else "false",
            "user.coi.tool": req.tool.name,
            "user.coi.session_id": session_id,
            "user.coi.image": req.image,
            "user.coi.uid": str(self.settings.code_uid),  # whose tmux (`coi tmux`, as COI)
            "security.guestapi": "false",
            "security.idmap.isolated": "true",
            **idmap_config,
        }
        if req.profile:
            config["user.coi.profile"] = req.profile
        if self.settings.alias:
            config["user.coi.alias"] = aliases.label(self.settings.alias, slot)
        devices: dict[str, dict[str, str]] = {
            "workspace": {
                "type": "disk",
                "source": req.workspace,
                "path": self.mount_point(req.workspace),
                **ws_extra,
            },
        }
        if self.incus.get_network(self.settings.bridge) is not None:
            devices["eth0"] = {"type": "nic", "network": self.settings.bridge, "name": "eth0"}
        pool = self.storage_pool()
        if pool:
            devices["root"] = {"type": "disk", "path": "/", "pool": pool}
        return config, devices

    def guard_privileged(self, instance: Instance | None = None) -> None:
        profile = self.incus.get_profile("default")
        if str((profile.get("config") or {}).get("security.privileged", "")).lower() == "true":
            raise CoiError(
                "refusing to start: the Incus 'default' profile sets "
                "security.privileged=true; fix with "
                "'incus profile unset default security.privileged'"
            )
        if instance and instance.expanded_config.get("security.privileged", "").lower() == "true":
            raise CoiError(
                f"refusing to start: container '{instance.name}' is privileged; fix with "
                f"'incus config unset {instance.name} security.privileged'"
            )

    # ------------------------------------------------------------------ launch
    def coi_instances(self, with_state: bool = False, addresses: bool = False) -> list[Instance]:
        prefix = self.settings.container_prefix
        return [
            i
            for i in self.incus.list_instances(prefix, with_state=with_state, addresses=addresses)
            if parse_container_name(prefix, i.name)
        ]

    def launch(self, req: LaunchRequest, interactive: bool = True) -> Session:
        """Create (or reuse) and start the container for one session; no agent started yet.

        Resuming (COI §2.4/§2.5): the session keeps its id; an unset persistence inherits the
        saved session's, and the session goes back to its original slot when that is free or
        still holds its own container: a stopped persistent one is restarted in place, a
        running one is reused as it is (the agent starts or is attached there)."""
        if not req.allow_home and exposes_home(req.workspace):
            raise CoiError(
                f"workspace '{req.workspace}' is your home directory or contains it: the agent "
                "would see ~/.ssh and every secret there; pick a project directory (or pass "
                "--force)"
            )
        self.incus.ping()
        self.incus.require_image(req.image)
        self.check_stale_base(req.image)
        self.guard_privileged()
        warn_old_kernel(self.say)
        store = SessionStore(req.tool)
        resume_meta = None
        if req.resume:
            resume_meta = store.resolve_resume(
                req.resume, req.workspace, self.settings.container_prefix
            )
            if req.resume == "auto":
                self.say(f"Auto-detected session: {resume_meta.session_id}")
            else:
                self.say(f"Resuming session: {resume_meta.session_id}")
            req = dataclasses.replace(req, persistent=self.resume_persistence(req, resume_meta))
        session_id = resume_meta.session_id if resume_meta else str(uuid.uuid4())
        if self.settings.alias:
            aliases.register(self.settings.alias, req.workspace, req.profile)
        if interactive:
            self.say(f"Setting up session {session_id}...")
        ws_hash = workspace_hash(req.workspace)
        with slot_lock(ws_hash, self.say):
            occupied = occupied_slots(self.coi_instances(), self.settings.container_prefix, ws_hash)
            slot = self.resume_slot(req, resume_meta, occupied)
            if slot is None:
                slot, note = choose_slot(occupied, req.slot, req.persistent)
                if note:
                    self.say(note)
            name = container_name(self.settings.container_prefix, req.workspace, slot)
            existing = occupied.get(slot)
            held = existing is not None and self.holds_session(existing, session_id)
            saved = store.has_saved_state(session_id) or not req.tool.config_dir
            if resume_meta is not None and not saved and not held:
                # Only the metadata written when it started: nothing to resume from (its
                # container, which would hold the agent's state, is gone too).
                raise CoiError(
                    f"session '{session_id}' not found - check available sessions with: "
                    "coi list --all"
                )
            if (
                held
                and existing is not None
                and existing.status == "Stopped"
                and not (existing.config.get("user.coi.persistent") == "true" and req.persistent)
                # Its own container, stopped but not reusable: save what it holds first (the
                # supervisor may not have finalized it yet), then start afresh from that.
                and self.finalize_if_stopped(name) in ("removed", "gone")
            ):
                existing = None
            session = Session(
                name,
                session_id,
                slot,
                req.workspace,
                req.persistent,
                req.tool,
                resume_meta=resume_meta,
                mounted=mounted_path(existing) if existing is not None else WORKSPACE,
            )
            ctx = LaunchContext(self, req, session, interactive=interactive)
            session.context = ctx
            self.mount_points[name] = session.mounted
            if existing is not None and existing.status != "Stopped":
                if resume_meta is None or not self.holds_session(existing, session_id):
                    raise CoiError(
                        f"container '{name}' is already running: attach with 'coi attach {name}'"
                    )
                return self.reuse_running(session, existing, interactive)
            if (
                existing is not None
                and existing.config.get("user.coi.persistent") == "true"
                and req.persistent
            ):
                self.guard_privileged(existing)
                self.say(f"Reusing persistent container {name}...")
                labels = {"user.coi.session_id": session_id, "user.coi.tool": req.tool.name}
                if self.settings.alias:
                    labels["user.coi.alias"] = aliases.label(self.settings.alias, slot)
                self.incus.update_instance(name, config=labels)
                session.reused = True
            else:
                if existing is not None:
                    self.say(f"Removing stopped leftover container {name}...")
                    self.remove_container(name)
                session.mounted = self.mount_points[name] = self.mount_point(req.workspace)
                ctx.config, ctx.devices = self.instance_spec(req, slot, session_id)
                run_hooks("prepare_instance", ctx)
                self.incus.create_instance(name, req.image, config=ctx.config, devices=ctx.devices)
            try:
                run_hooks("before_start", ctx)
                self.start_container(name, req.workspace)
            except BaseException:
                if session.reused:
                    self.stop_and_keep(name)
                else:
                    self.remove_container(name)
                raise
        return session

    def resume_persistence(self, req: LaunchRequest, meta: SessionMeta) -> bool:
        """An explicitly configured persistence (flag, config, env, profile) wins; an unset one
        inherits the resumed session's."""
        if self.settings.source("container.persistent") != "default":
            if req.persistent != meta.persistent:
                self.say(
                    f"Config [container] persistent = {str(req.persistent).lower()} overrides "
                    "the session's saved mode"
                )
            return req.persistent
        if meta.persistent:
            self.say("Inherited persistent mode from session")
        return meta.persistent

    def resume_slot(
        self, req: LaunchRequest, meta: SessionMeta | None, occupied: dict[int, Instance]
    ) -> int | None:
        """The resumed session's own slot (no --slot given) when it is free or its container
        there still belongs to this session; otherwise the lowest free slot: a stopped
        persistent container of another session is never taken over (its state is not this
        session's). A container still running the session wins over everything, --slot
        included. None when --slot was given (chosen as usual)."""
        if meta is None:
            return None
        for slot, instance in sorted(occupied.items()):
            if instance.status != "Stopped" and self.holds_session(instance, meta.session_id):
                return slot  # still running: never a second container for one session
        if req.slot:
            return None
        parsed = parse_container_name(self.settings.container_prefix, meta.container_name)
        if parsed and parsed[0] == workspace_hash(req.workspace):
            slot = parsed[1]
            current = occupied.get(slot)
            if current is None or self.holds_session(current, meta.session_id):
                self.say(f"Reusing original slot {slot} from session")
                return slot
        # A fresh container in the lowest free slot.
        return choose_slot(occupied, 0, False)[0]

    @staticmethod
    def holds_session(instance: Instance, session_id: str) -> bool:
        return instance.config.get("user.coi.session_id") == session_id

    def reuse_running(self, session: Session, instance: Instance, interactive: bool) -> Session:
        """`--resume=<id>` while that session's container still runs: use that container as it
        is (the agent is started there if its tmux session is gone, else just attached)."""
        name = instance.name
        if instance.status == "Frozen":
            raise CoiError(
                f"container '{name}' of session {session.session_id} is frozen (paused by the "
                f"threat monitor): 'coi unfreeze {name}' first"
            )
        if not interactive:
            raise CoiError(
                f"session {session.session_id} is still running in '{name}': attach with "
                f"'coi attach {name}'"
            )
        self.say("Container already running, reusing...")
        session.persistent = instance.config.get("user.coi.persistent") == "true"
        session.reused = True
        session.running = True
        return session

    def start_container(self, name: str, workspace: str) -> None:
        try:
            self.incus.start(name)
        except IncusError as exc:
            if "source path" in str(exc).lower() and self.incus.remote is not None:
                raise CoiError(
                    f"workspace {workspace} does not exist on "
                    f"{self.incus.where}: create it there first"
                ) from None
            raise

    def remove_container(self, name: str) -> None:
        """Delete a coi container (stopping it first) and tell the hooks it is gone."""
        try:
            self.incus.delete_instance(name, force=True)
        except InstanceNotFound:
            pass
        except IncusError:
            # Someone else deleting it at the same moment (`incus delete -f`, a racing
            # `coi kill`) is not a failure: it is gone either way.
            if self.incus.instance_exists(name):
                raise
        run_hooks("container_ended", self, name, True)

    def stop_and_keep(self, name: str, timeout: int | None = None) -> None:
        """Stop a persistent container for reuse and tell the hooks."""
        try:
            if self.incus.status(name) != "Stopped":
                self.incus.stop(
                    name, timeout=self.settings.shutdown_timeout if timeout is None else timeout
                )
        except InstanceNotFound:
            pass
        run_hooks("container_ended", self, name, False)

    def write_meta(self, session: Session) -> None:
        """metadata.json of an agent session, written when its agent starts (so `coi list`
        shows it; `coi run` commands are not sessions and get none)."""
        store = SessionStore(session.tool)
        meta = store.read_meta(session.session_id) or SessionMeta(
            session_id=session.session_id,
            container_name=session.container,
            persistent=session.persistent,
            workspace=session.workspace,
            created_at=now_rfc3339(),
        )
        meta.container_name = session.container
        meta.persistent = session.persistent
        meta.workspace = session.workspace
        meta.tool = session.tool.name
        meta.slot = session.slot
        if session.context is not None:
            meta.profile = session.context.request.profile
        store.write_meta(meta)

    def wait_ready(self, name: str) -> None:
        """Wait until systemd has finished booting (tmux must not race /tmp's boot cleanup)."""
        deadline = time.monotonic() + self.settings.ready_timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                result = self.incus.exec_capture(name, ["systemctl", "is-system-running", "--wait"])
            except IncusError as exc:
                # Right after start Incus can fail an exec ("Failed to retrieve PID of executing
                # child process"): that is still booting.
                if not self.incus.instance_exists(name):
                    raise
                last_error = str(exc)
                if self.incus.status(name) == "Stopped":
                    raise CoiError(
                        f"container '{name}' stopped while booting; {self.boot_log_tail(name)}"
                    ) from None
                time.sleep(0.1)
                continue
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            if state in ("offline", "unknown", "") or not result.ok:
                time.sleep(0.1)
                continue
            return
        raise CoiError(
            f"container '{name}' did not finish booting within "
            f"{self.settings.ready_timeout}s ([container] ready_timeout)"
            + (f"; last error: {last_error}" if last_error else "")
        )

    def boot_log_tail(self, name: str) -> str:
        """The end of the container's console and LXC logs, for an error message."""
        parts = []
        for log in ("console", "lxc.log"):
            path = (
                f"/1.0/instances/{name}/console"
                if log == "console"
                else (f"/1.0/instances/{name}/logs/lxc.log")
            )
            try:
                text = self.incus.request("GET", path, raw=True).content.decode("utf-8", "replace")
            except IncusError:
                continue
            lines = [line for line in text.splitlines() if line.strip()][-3:]
            if lines:
                parts.append(f"{log}: " + " | ".join(lines)[-400:])
        return "; ".join(parts) or "no log available ('incus info --show-log' may say more)"

    def restore_saved_state(self, session: Session) -> None:
        meta = session.resume_meta
        if meta is None or session.reused or not session.tool.config_dir:
            return
        store = SessionStore(session.tool)
        saved = store.config_copy(meta.session_id)
        if not saved.is_dir():
            return
        self.say(f"Restoring session data from {saved}")
        self.incus.push_tree(
            saved,
            session.container,
            f"{CODE_HOME}/{session.tool.config_dir}",
            uid=self.settings.code_uid,
            gid=self.settings.code_uid,
        )

    def agent_env(self, session: Session) -> dict[str, str]:
        env = {
            "HOME": CODE_HOME,
            "USER": self.settings.code_user,
            "LANG": "C.UTF-8",
            "TERM": sanitize_term(os.environ.get("TERM")),
            "IS_SANDBOX": "1",
            "COI_CONTAINER": session.container,
            "COI_SESSION_ID": session.session_id,
            **{k: in_workspace(v, session.mounted) for k, v in session.tool.env.items()},
        }
        if session.context is not None:
            run_hooks("agent_env", session.context, env)
        return env

    def agent_command(self, session: Session, debug: bool) -> list[str]:
        if debug:
            return ["bash"]
        resume_id = None
        if session.resume_meta is not None:
            saved = SessionStore(session.tool).config_copy(session.resume_meta.session_id)
            resume_id = session.tool.discover_resume_id(saved)
        permission = self.settings.permission_mode
        tool = session.tool
        if self.settings.tool_binary:  # [tool] binary: same argv contract, other executable
            tool = dataclasses.replace(tool, binary=self.settings.tool_binary)
        argv = tool.command(
            session.session_id,
            resume=session.resume_meta is not None,
            resume_id=resume_id,
            permission_mode=permission,
            context_path=SANDBOX_CONTEXT if self.settings.auto_context else None,
            options=tool_options(self.settings),
        )
        if use_dummy():
            # COI's test hook: the same tool (sessions, settings, argv), run by the stub.
            argv[0] = "dummy"
            self.say("Using dummy (test stub) for faster testing")
        return argv

    def start_agent(self, session: Session, debug: bool = False) -> None:
        """tmux session coi-<container> running `<tool argv>; exec bash` as the code user."""
        self.write_meta(session)
        if self.tmux_exists(session.container):
            return
        if session.context is not None:
            run_hooks("before_agent", session.context)
        argv = self.agent_command(session, debug)
        env = self.agent_env(session)
        inner = f"trap : INT; {shlex.join(argv)}; exec bash"
        if "PATH" in env:  # tmux's -e does not reach the first command's PATH: set it there
            inner = f"export PATH={shlex.quote(env['PATH'])}; {inner}"
        cmd = [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session.tmux,
            "-x",
            "200",
            "-y",
            "50",
            "-c",
            session.mounted,
        ]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        cmd += ["bash", "-c", inner]
        # Keys that arrive within a millisecond of each other are taken for a paste, and the
        # prefix among them is typed into the agent instead of detaching: what a script
        # driving `coi shell` through a terminal sends (seen as "^Bd" in the agent).
        cmd += [";", "set-option", "-t", session.tmux, "assume-paste-time", "0"]
        # The tmux server is a fork of the client that starts it and keeps that client's
        # command line, which `ps` shows to every process in the container: started by a
        # client with no values in it, the `-e NAME=value` (forwarded secrets) of the client
        # that makes the session live only as long as that short-lived client.
        # (exit-empty off keeps that server up until the session exists, on restores tmux's
        # own lifecycle once it does.)
        cmd = [
            "sh",
            "-c",
            START_TMUX_SERVER,
            "sh",
            *cmd,
            ";",
            "set-option",
            "-g",
            "exit-empty",
            "on",
        ]
        result = self.exec_as_code(session.container, cmd)
        # "duplicate session": `tmux new-session -d` returns at once, and under load Incus can
        # lose track of it ("Failed to retrieve PID") although it ran; the adapter's retry
        # then finds the session our first attempt made. It exists: that is success.
        if not result.ok and "duplicate session" not in result.stderr:
            raise CoiError(f"could not start the agent in tmux: {result.stderr.strip()}")
        if session.context is not None:
            run_hooks("after_start", session.context)

    def prepare_command(self, session: Session) -> None:
        """`coi run`: the same hooks as an agent start, before the command runs."""
        if session.context is not None:
            run_hooks("before_agent", session.context)
            run_hooks("after_start", session.context)

    def check_stale_base(self, image: str) -> None:
        """[container] stale_base_check: warn (the default), error or off."""
        if self.settings.stale_base_check == "off":
            return
        reason = stale_image(self.incus, self.settings, image)
        if reason and self.settings.stale_base_check == "error":
            raise CoiError(f'{reason} ([container] stale_base_check = "error")')
        if reason:
            self.say(f"Warning: {reason}")

    def code_command(self, argv: list[str]) -> list[str]:
        """argv run as the code user *with its supplementary groups* (docker, sudo): Incus
        exec's --user/--group set only the primary ids, so we start as root and drop with
        setpriv, which also calls initgroups."""
        uid = self.settings.code_uid
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups", "--", *argv]

    def mount_point(self, workspace: str) -> str:
        """Where a new container gets the workspace: /workspace, or the host path itself with
        [paths] preserve_workspace_path (COI), unless that would cover the container's system
        or lie under a /tmp that [limits.disk] tmpfs_size mounts over."""
        if not self.settings.preserve_workspace_path:
            return WORKSPACE
        path = os.path.normpath(workspace)
        for top in SYSTEM_DIRS:
            if (
                path == "/"
                or path == top
                or path.startswith(top + "/")
                or top.startswith(path + "/")
            ):
                raise CoiError(
                    f"preserve_workspace_path: '{path}' would be mounted over the container's "
                    f"{top}; use this workspace at /workspace (preserve_workspace_path = false)"
                )
        if self.settings.limit_disk_tmpfs_size and (path == "/tmp" or path.startswith("/tmp/")):
            raise CoiError(
                f"preserve_workspace_path: '{path}' is under /tmp, which [limits.disk] "
                "tmpfs_size covers with a tmpfs in the container; turn one of them off"
            )
        return path

    def mounted(self, name: str) -> str:
        """The workspace's path in container `name` (known from its launch, else asked)."""
        if name not in self.mount_points:
            try:
                self.mount_points[name] = mounted_path(self.incus.get_instance(name))
            except IncusError:
                return WORKSPACE
        return self.mount_points[name]

    def exec_attached(self, session: Session, argv: list[str], env: dict[str, str]) -> int:
        """argv as the code user in the workspace, attached to this terminal; its exit code.
        The environment goes in as a root-only file the command's shell reads, not as `incus
        exec --env NAME=value`, whose values every host user sees in `ps`. coi deletes the
        file afterwards, not the shell: under load Incus may start the command twice (its
        "Failed to retrieve PID" retry), and the second must find it too."""
        path = f"/run/coi-env-{uuid.uuid4().hex}"
        bad = [name for name in env if not SHELL_NAME_RE.match(name)]
        if bad:  # checked where each comes from; a shell line must never run one
            raise CoiError(f"not an environment variable name: {bad[0]!r}")
        lines = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
        self.incus.push_file(session.container, path, lines.encode(), mode=0o600)
        read = 'set -a; . "$0"; set +a; exec "$@"'
        try:
            return self.incus.exec_stream(
                session.container,
                ["sh", "-c", read, path, *self.code_command(argv)],
                cwd=session.mounted,
            )
        finally:
            with contextlib.suppress(IncusError):  # stopped or gone with its /run: fine
                self.incus.delete_file(session.container, path)

    def exec_as_code(self, name: str, argv: list[str]) -> ExecResult:
        return self.incus.exec_capture(
            name,
            self.code_command(argv),
            cwd=self.mounted(name),
            env={"HOME": CODE_HOME, "USER": self.settings.code_user, "LANG": "C.UTF-8"},
        )

    def tmux_user(self, name: str) -> int:
        """The uid whose tmux server holds the container's session: the uid recorded on the
        instance (user.coi.uid), else the code user's there, else [incus] code_uid."""
        try:
            recorded = self.incus.get_instance(name).config.get("user.coi.uid", "")
        except IncusError:
            recorded = ""
        if recorded.isdigit():
            return int(recorded)
        try:
            probe = self.incus.exec_capture(name, ["id", "-u", self.settings.code_user])
        except IncusError:
            return self.settings.code_uid
        answer = probe.stdout.strip()
        return int(answer) if probe.ok and answer.isdigit() else self.settings.code_uid

    def tmux_command(self, name: str, argv: list[str]) -> ExecResult:
        """tmux in the container as the session's user (never as root, whose tmux client
        would make /tmp/tmux-0); root's server only when it exists and the user has none."""
        uid = self.tmux_user(name)
        env = {"HOME": CODE_HOME, "LANG": "C.UTF-8"}
        result = self.incus.exec_capture(name, argv, user=uid, group=uid, cwd="/", env=env)
        if result.ok:
            return result
        root_server = self.incus.exec_capture(name, ["test", "-S", "/tmp/tmux-0/default"])
        if root_server.ok:  # a session made with `coi container exec` (root, its default)
            return self.incus.exec_capture(name, argv, cwd="/", env={"LANG": "C.UTF-8"})
        return result

    def tmux_exists(self, name: str) -> bool:
        try:
            result = self.exec_as_code(name, ["tmux", "has-session", "-t", tmux_session(name)])
        except IncusError:  # stopping or gone: no session either way
            return False
        return bool(getattr(result, "ok", False))

    def shutting_down(self, name: str) -> bool | None:
        """Whether the container is shutting down (a poweroff from inside, the monitor's
        kill): False only while its systemd answers that it runs; None when the image has no
        systemctl to ask. Mid-shutdown the answer is 'stopping', 'unknown', a bus error, a
        killed systemctl or an exec that Incus refuses: all True."""
        try:
            result = self.incus.exec_capture(name, ["systemctl", "is-system-running"])
        except IncusError as exc:
            return None if "Command not found" in str(exc) else True
        state = result.stdout.strip()
        return state not in ("running", "degraded", "starting", "initializing", "maintenance")

    def attached(self, name: str) -> AbstractContextManager[None]:
        """Held (shared) while a terminal is attached; the supervisor waits for it before it
        cleans up, so the attached `coi` reports how the session ended."""
        return file_lock(f"attached-{name}", shared=True)

    def attach(self, name: str, bash: bool = False) -> int:
        env = {
            "HOME": CODE_HOME,
            "USER": self.settings.code_user,
            "LANG": "C.UTF-8",
            "TERM": sanitize_term(os.environ.get("TERM")),
        }
        argv = ["bash", "-l"] if bash else ["tmux", "attach", "-t", tmux_session(name)]
        return self.incus.exec_stream(
            name, self.code_command(argv), cwd=self.mounted(name), env=env, tty=True
        )

    def supervisor_env(self) -> dict[str, str]:
        """The supervisor talks to the daemon this manager talks to (a remote, or local)."""
        env = dict(os.environ)
        env.pop("COI_REMOTE", None)
        if self.incus.remote is not None:
            env["COI_REMOTE"] = self.incus.remote.name
        return env

    def spawn_supervisor(self, name: str) -> None:
        """A detached process that saves and cleans up when the container stops later."""
        # `coi logs NAME` shows these (COI's layout: <name>.stdout.log and .stderr.log).
        out = open(logs_dir() / f"{name}.stdout.log", "ab")  # noqa: SIM115
        errors = open(logs_dir() / f"{name}.stderr.log", "ab")  # noqa: SIM115
        subprocess.Popen(
            [sys.executable, "-m", "coi_tui.sessions.supervisor", name],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=errors,
            start_new_session=True,
            env=self.supervisor_env(),
            close_fds=True,
        )
        out.close()
        errors.close()

    # ------------------------------------------------------------------ ending sessions
    def session_of(self, instance: Instance) -> tuple[Tool, SessionMeta] | None:
        tool_name = instance.config.get("user.coi.tool", "")
        session_id = instance.config.get("user.coi.session_id", "")
        if not tool_name or not session_id:
            return None
        try:
            tool = get_tool(tool_name)
        except CoiError:
            return None
        meta = SessionStore(tool).read_meta(session_id)
        if meta is None:
            # No metadata: a `coi run` container (commands are not sessions: nothing to save,
            # as in COI), or a session whose agent never started.
            return None
        return tool, meta

    def save_session(self, instance: Instance) -> bool:
        found = self.session_of(instance)
        if found is None:
            return False
        tool, meta = found
        store = SessionStore(tool)
        self.say(f"Saving session data to {store.path(meta.session_id)}")
        # A running container is frozen while it is read: its agent cannot swap a file for a
        # FIFO between the type check and the read (which would hang Incus's forkfile).
        frozen = False
        try:
            if self.incus.status(instance.name) == "Running":
                self.incus.freeze(instance.name)
                frozen = True
        except IncusError:
            pass
        try:
            ok = store.save_from(
                lambda remote, local, **bounds: self.incus.pull_tree(
                    instance.name, remote, local, **bounds
                ),
                instance.name,
                meta,
                say=self.say,
            )
        finally:
            if frozen:
                try:
                    self.incus.unfreeze(instance.name)
                except IncusError as exc:
                    self.say(f"warning: could not unfreeze {instance.name}: {exc}")
        self.say("Session data saved successfully" if ok else "No session data to save")
        return ok

    def finalize_if_stopped(self, name: str) -> str:
        """After the container stopped on its own: save, then delete (ephemeral) or keep.
        Returns 'gone', 'running', 'kept' or 'removed'. Safe to call from several processes."""
        with file_lock(f"session-{name}"):
            try:
                instance = self.incus.get_instance(name)
            except InstanceNotFound:
                return "gone"
            if instance.status != "Stopped":
                return "running"
            self.save_session(instance)
            # the threat monitor's kill (it froze, tagged and force-stopped it, as root)
            # ends a persistent session too, as `coi kill` does: saved, then deleted here
            killed = instance.config.get(KILLED_KEY) == KILLED_BY_MONITOR
            if instance.config.get("user.coi.persistent") == "true" and not killed:
                run_hooks("container_ended", self, name, False)
                self.say(
                    f"Container {name} stopped and kept for reuse (persistent): "
                    "'coi shell --continue' (or 'coi shell --persistent') restarts it"
                )
                return "kept"
            self.say("Container was stopped, removing...")
            self.remove_container(name)
            self.say("Container removed (session data saved for --resume)")
            return "removed"

    def shutdown(self, name: str, timeout: int, force: bool = False) -> None:
        """Graceful stop within timeout (then forced), save, delete."""
        with file_lock(f"session-{name}"):
            instance = self.incus.get_instance(name)
            if instance.frozen:
                self.incus.unfreeze(name)
            if instance.status in ("Running", "Frozen"):
                self.incus.stop(name, timeout=timeout, force=force)
            self.save_session(instance)
            self.remove_container(name)

    def kill(self, name: str, *, expect_id: str = "") -> bool:
        """Force stop, save what can be saved, delete. False when it was already gone, or
        when `expect_id` is given and `name` is now another instance (its volatile.uuid
        differs: a successor that took the name is never touched)."""
        with file_lock(f"session-{name}"):
            try:
                instance = self.incus.get_instance(name)
            except InstanceNotFound:
                return False
            if expect_id and instance.config.get("volatile.uuid", "") != expect_id:
                return False
            if instance.status in ("Running", "Frozen"):
                self.incus.stop(name, force=True)
            try:
                self.save_session(instance)
            except IncusError as exc:
                self.say(f"warning: could not save session data: {exc}")
            self.remove_container(name)
            return True

    def save_running(self, name: str) -> None:
        """Save the session of a container that keeps running (signals to `coi shell`)."""
        try:
            self.save_session(self.incus.get_instance(name))
        except (IncusError, OSError) as exc:
            self.say(f"warning: could not save session data: {exc}")


# Where preserve_workspace_path may not put the workspace: the container's own system (a
# mount there would hide it) and what its kernel and init own.
SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
    "/home/code",
    "/root",
)


SHELL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def mounted_path(instance: Instance) -> str:
    """Where a container has its workspace (its `workspace` disk device)."""
    return instance.devices.get("workspace", {}).get("path") or WORKSPACE


def in_workspace(value: str, mounted: str) -> str:
    """A tool's path under /workspace, moved to where this session has its workspace."""
    if value == WORKSPACE or value.startswith(WORKSPACE + "/"):
        return mounted + value[len(WORKSPACE) :]
    return value


START_TMUX_SERVER = 'tmux start-server \\; set-option -g exit-empty off 2>/dev/null; exec "$@"'


def use_dummy() -> bool:
    """COI_USE_DUMMY=1: run the tool's argv with `dummy` as argv[0] (COI's test hook)."""
    return os.environ.get("COI_USE_DUMMY", "").strip().lower() in ("1", "true", "yes")


def workspace_of(instance: Instance) -> str:
    return instance.config.get("user.coi.workspace", "")


def is_persistent(instance: Instance) -> bool:
    return instance.config.get("user.coi.persistent") == "true"
