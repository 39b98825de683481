"""The container's kernel surface. Docker inside the session container needs the nesting and
syscall-interception keys in an unprivileged container (`[container] docker = true`, the
default; never security.privileged). `[security] reduce_kernel_surface` denies the syscalls an
agent never needs and that carry most container-escape bugs (io_uring, bpf, userfaultfd, the
keyring; `_strict` adds perf_event_open), and wins over docker: nesting stays off. Every key is
set or removed on each start, so a reused persistent container follows the current config."""

from __future__ import annotations

import errno

from coi_tui.sessions.hookspec import LaunchContext, SessionHook

DOCKER_KEYS = {
    "security.nesting": "true",
    "security.syscalls.intercept.mknod": "true",
    "security.syscalls.intercept.setxattr": "true",
}
DENY_KEY = "security.syscalls.deny"
REDUCED_SYSCALLS = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
)
STRICT_SYSCALLS = ("perf_event_open",)
ENOSYS = errno.ENOSYS


def kernel_surface(docker: bool, reduce: bool, strict: bool) -> dict[str, str | None]:
    """Each key this hook owns -> its value, None to remove it."""
    reduce = reduce or strict
    wanted: dict[str, str | None] = dict.fromkeys(DOCKER_KEYS)
    if docker and not reduce:
        wanted.update(DOCKER_KEYS)
    denied = (*REDUCED_SYSCALLS, *(STRICT_SYSCALLS if strict else ())) if reduce else ()
    # LXC's seccomp line: ENOSYS, as for Incus's own defaults, so a program falls back (libuv,
    # tokio and liburing treat a missing io_uring as "not this kernel")
    wanted[DENY_KEY] = "\n".join(f"{name} errno {ENOSYS}" for name in denied) or None
    return wanted


class KernelSurfaceHook(SessionHook):
    def wanted(self, ctx: LaunchContext) -> dict[str, str | None]:
        settings = ctx.manager.settings
        return kernel_surface(
            settings.docker, settings.reduce_kernel_surface, settings.reduce_kernel_surface_strict
        )

    def prepare_instance(self, ctx: LaunchContext) -> None:
        for key, value in self.wanted(ctx).items():
            if value is None:
                ctx.config.pop(key, None)
            else:
                ctx.config[key] = value

    def before_start(self, ctx: LaunchContext) -> None:
        if not ctx.session.reused:
            return  # new containers got their keys in prepare_instance
        ctx.manager.incus.update_instance(ctx.session.container, config=self.wanted(ctx))


HOOK = KernelSurfaceHook()
