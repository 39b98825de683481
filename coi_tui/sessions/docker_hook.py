"""Docker inside the session container: the nesting and syscall-interception keys dockerd needs
in an unprivileged container (`[container] docker = true`, the default). Never
security.privileged. With `docker = false` the keys are absent (also removed from a reused
persistent container)."""

from __future__ import annotations

from coi_tui.sessions.hookspec import LaunchContext, SessionHook

DOCKER_KEYS = {
    "security.nesting": "true",
    "security.syscalls.intercept.mknod": "true",
    "security.syscalls.intercept.setxattr": "true",
}


class DockerHook(SessionHook):
    def prepare_instance(self, ctx: LaunchContext) -> None:
        if ctx.manager.settings.docker:
            ctx.config.update(DOCKER_KEYS)
        else:
            for key in DOCKER_KEYS:
                ctx.config.pop(key, None)

    def before_start(self, ctx: LaunchContext) -> None:
        if not ctx.session.reused:
            return  # new containers got their keys in prepare_instance
        wanted: dict[str, str | None] = (
            dict(DOCKER_KEYS) if ctx.manager.settings.docker else dict.fromkeys(DOCKER_KEYS)
        )
        ctx.manager.incus.update_instance(ctx.session.container, config=wanted)


HOOK = DockerHook()
