"""Exceptions shared by every layer. Each carries one actionable line for the user."""


class CoiError(Exception):
    """A runtime failure: the CLI prints the message on one line and exits 1."""

    exit_code = 1


class UsageError(CoiError):
    """Bad flags or arguments: exit 2."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM/SIGHUP turned into an exception so cleanup code runs (like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
