"""The simulator's error: an HTTP status, Anthropic's error type and message."""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """An error response: status, Anthropic error type, message, extra headers."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)
