"""Starting and ending sessions: the one sequence that `coi shell/run`, the dashboard and
`coi snapshot branch` all call, so a session starts the same way from each of them.

    settings  = config.session_settings(profile, overrides)   # profile + choices -> Settings
    service   = SessionService(incus, settings, say)
    session   = service.start(service.request(workspace, ...))

`start` creates (or reuses) the container with the session hooks (prepare_instance: limits,
environment, mounts, protected paths...; before_start), waits for it to boot, restores the
agent's saved state, starts the agent in tmux and the supervisor. `branch` does the same for
a copy of a snapshot; `run_command` is the `coi run` lifecycle; `kill`/`shutdown` end one.

Nothing here prints: progress and notes go to `say` (the CLI: stderr; the dashboard drops them).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from coi_tui.config import Settings
from coi_tui.config.settings import SessionOverrides, session_settings
from coi_tui.core.errors import CoiError, Terminated
from coi_tui.incus import Incus, InstanceNotFound
from coi_tui.sessions import immutable
from coi_tui.sessions.hooks import LaunchContext, run_hooks
from coi_tui.sessions.manager import LaunchRequest, Session, SessionManager, resolve_workspace
from coi_tui.sessions.naming import container_name, workspace_hash
from coi_tui.sessions.slots import choose_slot, occupied_slots, slot_lock
from coi_tui.sessions.snapshots import get_snapshot, session_of_container
from coi_tui.tools import get_tool

Say = Callable[[str], None]


class SessionService:
    """Sessions of one Incus daemon, started with one set of settings (a profile applied)."""

    def __init__(self, incus: Incus, settings: Settings, say: Say) -> None:
        self.incus = incus
        self.settings = settings
        self.say = say
        self.manager = SessionManager(incus, settings, say=say)

    @classmethod
    def for_profile(
        cls,
        incus: Incus,
        profile: str,
        overrides: SessionOverrides | None = None,
        *,
        say: Say,
        cwd: Path | None = None,
    ) -> SessionService:
        """The service for sessions started with `profile` ("" = the configured one) and the
        starter's choices (tool, image, persistence) over the config."""
        return cls(incus, session_settings(profile, overrides, cwd=cwd, say=say), say)

    # ------------------------------------------------------------------ starting
    def request(
        self,
        workspace: str,
        *,
        slot: int = 0,
        resume: str | None = None,
        allow_home: bool = False,
        debug: bool = False,
    ) -> LaunchRequest:
        """A launch of `workspace` as the settings say (tool, image, persistence, profile).
        On a remote the path is on the remote's disk: it need not exist here."""
        remote = self.incus.remote.name if self.incus.remote is not None else None
        path = resolve_workspace(workspace, remote, self.say)
        return LaunchRequest(
            workspace=path,
            tool=get_tool(self.settings.tool),
            slot=slot,
            persistent=self.settings.persistent,
            image=self.settings.image,
            resume=resume,
            profile=self.settings.profile,
            debug=debug,
            allow_home=allow_home,
        )

    def start(self, req: LaunchRequest, *, interactive: bool = True) -> Session:
        """Launch, wait for boot, restore the agent's saved state, start the agent in tmux,
        then the supervisor. If the agent cannot start, the container is removed again,
        unless it is persistent or a running session this start only joined (a resume of a
        live container: someone may be working in it)."""
        manager = self.manager
        session = manager.launch(req, interactive=interactive)
        try:
            manager.wait_ready(session.container)
            manager.restore_saved_state(session)
            manager.start_agent(session, debug=req.debug)
        except BaseException:
            self.discard_failed(session)
            raise
        manager.spawn_supervisor(session.container)
        return session

    def discard_failed(self, session: Session) -> None:
        """Clean up after a start that failed half-way (the guard described in `start`)."""
        if not session.persistent and not session.running:
            self.manager.kill(session.container)  # its hooks' container_ended clean up
        elif not session.running:
            immutable.release(session.container, self.say)  # no agent: the paths are yours

    def enter(self, name: str, *, debug: bool = False) -> Session:
        """`coi shell --container NAME`: the container as it is (no workspace remount);
        started when stopped, its agent started when its tmux session is gone, then the
        supervisor."""
        incus = self.incus
        if not incus.instance_exists(name):
            raise CoiError(f"container '{name}' not found (see 'coi list')")
        status = incus.status(name)
        if status == "Frozen":
            raise CoiError(
                f"container '{name}' is frozen (paused by the monitor?): 'coi unfreeze {name}'"
            )
        if status != "Running":
            self.say(f"Starting {name}...")
            incus.start(name)
        self.manager.wait_ready(name)
        session = session_of_container(self.manager, name)
        self.manager.start_agent(session, debug=debug)
        self.manager.spawn_supervisor(name)
        return session

    def run_command(self, req: LaunchRequest, command: Callable[[Session], list[str]]) -> int:
        """`coi run`: a container for one command, no agent. `command` gives the argv once
        the container is up (a headless prompt is staged in it first). Returns the command's
        exit code (128+N for signal N, 130 for ^C); the container is removed afterwards, or
        stopped and kept when persistent."""
        manager = self.manager
        session = manager.launch(req, interactive=False)

        def run() -> int:
            # booted first: the boot's /tmp cleanup would delete what the command made there
            manager.wait_ready(session.container)
            manager.prepare_command(session)
            env = manager.agent_env(session)
            return manager.exec_attached(session, command(session), env)

        return self.attached_run(session, run, save=False)

    def attached_run(self, session: Session, run: Callable[[], int], *, save: bool) -> int:
        """The exit code of a command run attached (`run`), 128+N for signal N and 130 for
        ^C; then the session ends (end_attached), whatever happened."""
        try:
            return run()
        except Terminated as exc:
            return 128 + exc.signum
        except KeyboardInterrupt:
            return 130
        finally:
            self.end_attached(session, save=save)

    def end_attached(self, session: Session, *, save: bool) -> None:
        """The end of a session whose command ran attached (`coi run`, `coi shell` without
        tmux): one that stopped under it (a poweroff, the threat monitor's kill) is finalized
        as the supervisor would (a monitor-killed persistent one is deleted, never reused);
        else saved when `save`, then removed, or stopped and kept when persistent."""
        manager, name = self.manager, session.container
        try:
            stopped = self.incus.status(name) == "Stopped"
        except InstanceNotFound:
            return
        if stopped:
            manager.finalize_if_stopped(name)
            return
        if save:
            manager.save_running(name)
        if session.persistent:
            manager.stop_and_keep(name)
        else:
            manager.remove_container(name)

    def run_direct(
        self, req: LaunchRequest, announce: Callable[[Session, str], None]
    ) -> tuple[Session, int]:
        """`coi shell` with [shell] use_tmux = false: the agent's argv (bash with --debug)
        attached to this terminal through a plain exec, no tmux; then the session is saved
        and the container removed, or stopped and kept when persistent. Returns the session
        and the agent's exit code."""
        manager = self.manager
        session = manager.launch(req, interactive=False)

        def run() -> int:
            manager.wait_ready(session.container)
            manager.restore_saved_state(session)
            manager.write_meta(session)
            manager.prepare_command(session)
            argv = manager.agent_command(session, req.debug)
            env = manager.agent_env(session)
            # as in tmux mode: the supervisor's workspace patrol and max_duration, and its
            # clean-up should this process die; it waits for the attached lock to end
            manager.spawn_supervisor(session.container)
            announce(session, "Direct (no tmux)")
            with manager.attached(session.container):
                return manager.exec_attached(session, argv, env)

        return session, self.attached_run(session, run, save=True)

    def branch(self, container: str, snapshot: str, slot: int = 0) -> Session:
        """A new slot of the same workspace, started from `snapshot` of `container`; the
        original keeps running. The copy is shaped like any new session's container (the
        hooks' prepare_instance: limits, environment, mounts, protected-path copies), with
        the source session's profile, tool and persistence, and gets its agent and
        supervisor."""
        get_snapshot(self.incus, container, snapshot)
        source = session_of_container(self.manager, container)
        if not source.workspace:
            raise CoiError(f"{container} is not a coi session container (no workspace recorded)")
        labels = self.incus.get_instance(container).config
        profile = labels.get("user.coi.profile", "")
        service = self
        if profile != self.settings.profile:
            overrides = SessionOverrides(tool=source.tool.name, persistent=source.persistent)
            service = SessionService.for_profile(self.incus, profile, overrides, say=self.say)
        image = labels.get("user.coi.image", "") or service.settings.image
        return service._branch_from(container, snapshot, source, slot, image)

    def _branch_from(
        self, container: str, snapshot: str, source: Session, slot: int, image: str
    ) -> Session:
        manager, incus = self.manager, self.incus
        prefix = self.settings.container_prefix
        with slot_lock(workspace_hash(source.workspace), self.say):
            occupied = occupied_slots(
                manager.coi_instances(), prefix, workspace_hash(source.workspace)
            )
            new_slot, note = choose_slot(occupied, slot, persistent=False)
            if note:
                self.say(note)
            new_name = container_name(prefix, source.workspace, new_slot)
            if new_slot in occupied:
                manager.remove_container(new_name)
            session = Session(
                new_name,
                str(uuid.uuid4()),
                new_slot,
                source.workspace,
                source.persistent,
                source.tool,
            )
            req = LaunchRequest(
                workspace=source.workspace,
                tool=source.tool,
                slot=new_slot,
                persistent=source.persistent,
                image=image,  # what the copy was made from, as the source recorded it
                profile=self.settings.profile,
            )
            ctx = LaunchContext(manager, req, session)
            session.context = ctx
            ctx.config, ctx.devices = manager.instance_spec(req, new_slot, session.session_id)
            ctx.config["user.coi.branched_from"] = f"{container}/{snapshot}"
            run_hooks("prepare_instance", ctx)
            # A copy takes the snapshot's config and devices; what the request names wins.
            body = {
                "name": new_name,
                "type": "container",
                "source": {
                    "type": "copy",
                    "source": f"{container}/{snapshot}",
                    "instance_only": True,
                },
                "config": ctx.config,
                "devices": ctx.devices,
            }
            incus.request("POST", "/1.0/instances", body=body)
            try:
                run_hooks("before_start", ctx)
                manager.start_container(new_name, source.workspace)
            except BaseException:
                manager.remove_container(new_name)
                raise
        try:
            manager.wait_ready(new_name)
            manager.start_agent(session)
        except BaseException:
            self.discard_failed(session)
            raise
        manager.spawn_supervisor(new_name)
        return session

    # ------------------------------------------------------------------ ending
    def kill(self, name: str) -> bool:
        """Force stop, save the session, delete. False when it was already gone."""
        return self.manager.kill(name)

    def shutdown(self, name: str, timeout: int | None = None) -> None:
        """Graceful stop (forced after `timeout`, default the config's), save, delete."""
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        self.manager.shutdown(name, timeout=wait)
