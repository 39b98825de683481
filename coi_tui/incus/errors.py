"""Incus failures, turned into one-line messages that say what to do."""

from coi_tui.core.errors import CoiError


class IncusError(CoiError):
    """Any failure reported by, or on the way to, the Incus daemon."""


class DaemonUnavailable(IncusError):
    def __init__(self, socket_path: str, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"Incus is not running: nothing answers on {socket_path}{why}. Start it with "
            "'sudo systemctl start incus' (or 'sudo scripts/start-incus.sh' where there is no "
            "systemd), then try again"
        )


class RemoteUnavailable(DaemonUnavailable):
    def __init__(self, where: str, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        IncusError.__init__(
            self,
            f"{where} is unreachable{why}: check the address, and that the server listens "
            "on the network ('incus config set core.https_address :8443' there)",
        )


class SocketPermissionDenied(IncusError):
    def __init__(self, socket_path: str) -> None:
        super().__init__(
            f"permission denied on the Incus socket {socket_path}: add your user to the "
            "incus-admin group ('sudo usermod -aG incus-admin $USER'), then log in again"
        )


class NotFound(IncusError):
    """An instance, image, snapshot, network or pool does not exist."""


class InstanceNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"container '{name}' not found (see 'coi list')")
        self.name = name


class ImageNotFound(NotFound):
    def __init__(self, alias: str) -> None:
        if alias.startswith("coi-default") or alias == "coi":
            hint = "run 'coi build' first"
        elif alias.startswith("coi-lean"):
            hint = "run 'coi build --lean' first"
        else:
            hint = "see 'coi image list --all'; 'coi build' makes coi-default"
        super().__init__(f"image '{alias}' not found - {hint}")
        self.alias = alias


class Conflict(IncusError):
    """The object already exists, or is in a state that forbids the operation."""
