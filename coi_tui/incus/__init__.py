"""Incus adapter: a typed layer over pylxd and the REST API. No UI imports here."""

from coi_tui.incus.client import ExecResult, Image, Incus, Instance, default_socket_path
from coi_tui.incus.errors import (
    Conflict,
    DaemonUnavailable,
    ImageNotFound,
    IncusError,
    InstanceNotFound,
    NotFound,
    SocketPermissionDenied,
)

__all__ = [
    "Conflict",
    "DaemonUnavailable",
    "ExecResult",
    "Image",
    "ImageNotFound",
    "Incus",
    "IncusError",
    "Instance",
    "InstanceNotFound",
    "NotFound",
    "SocketPermissionDenied",
    "default_socket_path",
]
