"""Exceptions that carry a decision: what the user is told, and what the CLI exits with."""


class UserError(Exception):
    """Bad input: one clear sentence the user can act on. CLI exit code 2."""

    def __init__(self, message: str, key: str = "bad_input", **params):
        super().__init__(message)
        self.key = key  # stable id, so front ends can translate the message
        self.params = params


class ModelError(Exception):
    """The model cannot be loaded or run here (missing weights, no GPU). One line, CLI exit code 2."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), for one-line reports."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]
