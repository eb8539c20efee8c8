"""The one exception tree of ofactl; the CLI maps it to a red line, a hint and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # an operation ran and failed (or the fleet is degraded, for `status`)
EXIT_USAGE = 2  # bad flags or a bad inventory (or the fleet is down, for `status`)


class OfactlError(Exception):
    """Base of every error ofactl raises on purpose: `<where>: <what>` plus a hint."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(OfactlError):
    """Bad command-line usage (conflicting flags, unknown host name, ...)."""

    exit_code = EXIT_USAGE


class InventoryError(OfactlError):
    """The inventory file is missing, not YAML, or does not validate."""

    exit_code = EXIT_USAGE


class RenderError(OfactlError):
    """A template failed to render (undefined value, syntax error)."""

    exit_code = EXIT_FAILED


class OperationError(OfactlError):
    """An operation on the fleet failed (remote command, validation, readiness, lock...)."""

    exit_code = EXIT_FAILED


class TransportError(OperationError):
    """SSH could not connect, authenticate, verify a host key, or a call timed out."""


class LabError(OperationError):
    """The lab could not be created, inspected or removed."""
