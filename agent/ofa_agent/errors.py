"""The agent's HTTP error: every non-2xx answer is JSON {"error": {"code", "message"}}."""

from __future__ import annotations


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine code and a sentence saying what was wrong."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body of the answer."""
        return {"error": {"code": self.code, "message": self.message}}


class QueueFull(ApiError):
    """The batching queue is full (429 with Retry-After)."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(
            429, "queue_full",
            f"the agent's queue is full ({queued} pairs waiting); retry after {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        )


class DeadlineExceeded(ApiError):
    """The per-request deadline passed before the answer was ready (504)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            504, "deadline_exceeded",
            f"no answer within the request deadline of {timeout_s:g} s",
        )


class NotReady(ApiError):
    """The model is not loaded (yet) or the agent is shutting down (503 with Retry-After)."""

    def __init__(self, reason: str, retry_after_s: int = 5) -> None:
        super().__init__(
            503, "not_ready", f"the agent cannot serve predictions: {reason}",
            {"Retry-After": str(retry_after_s)},
        )
