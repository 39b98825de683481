"""Exceptions shared by every layer. Each carries one actionable line for the user."""


class CoiError(Exception):
    """A runtime failure: the CLI prints the message on one line and exits 1."""

    exit_code = 1


class UsageError(CoiError):
    """Bad flags or arguments: exit 2."""

    exit_code = 2
