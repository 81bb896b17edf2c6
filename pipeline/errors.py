"""Every error the pipeline raises derives from `PipelineError`.

    PipelineError
    ├── ConfigError                 bad settings or arguments           (not retriable)
    ├── SecretError                 a secret reference cannot be read   (not retriable)
    ├── BrokerError                 Kafka refused or is unreachable     (retriable)
    ├── RequestError                one request failed: it becomes a dead letter
    │   ├── SchemaError             undecodable value        reason schema_error
    │   ├── AuthFailed              signature/identity check reason auth_failed
    │   ├── UnknownPartner          no such partner          reason unknown_partner
    │   ├── PartnerDisabled         partner switched off     reason partner_disabled
    │   ├── QuotaExceeded           budget or quota spent    reason quota_exceeded
    │   ├── InvalidRequest          fails validation         reason invalid_request
    │   ├── DeadlineExpired         deadline_ms has passed   reason deadline_expired
    │   ├── UpstreamRejected        Claude said no (4xx)     reason upstream_rejected
    │   └── UpstreamExhausted       retries used up          reason upstream_exhausted
    └── UpstreamError               one failed Claude attempt; `retriable` says whether
                                    the retry policy may try again (429, 5xx, timeout,
                                    connection) or must give up (other 4xx)

Like aiokafka's `KafkaError.retriable`, each class says whether trying again
can help. Errors carry the data a person needs to act (partner, request_id,
status, retry_after) and never a secret or prompt text.
"""

from __future__ import annotations

from typing import ClassVar

#: The dead-letter reasons of the contract, in the order of the Avro enum.
REASONS = (
    "schema_error",
    "auth_failed",
    "unknown_partner",
    "partner_disabled",
    "quota_exceeded",
    "invalid_request",
    "upstream_rejected",
    "upstream_exhausted",
    "deadline_expired",
)


class PipelineError(Exception):
    retriable: ClassVar[bool] = False


class ConfigError(PipelineError):
    """Settings, a partner registry or a command-line argument is invalid."""


class SecretError(PipelineError):
    """A secret reference (env:NAME, file:PATH) cannot be resolved."""


class BrokerError(PipelineError):
    """Kafka is unreachable or refused an operation."""

    retriable = True


class RequestError(PipelineError):
    """A request that cannot be served: it ends as a dead letter with `reason`."""

    reason: ClassVar[str] = "invalid_request"

    def __init__(self, detail: str, *, attempts: int = 0, error_type: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.attempts = attempts
        self.error_type = error_type


class SchemaError(RequestError):
    reason = "schema_error"


class AuthFailed(RequestError):
    reason = "auth_failed"


class UnknownPartner(RequestError):
    reason = "unknown_partner"


class PartnerDisabled(RequestError):
    reason = "partner_disabled"


class QuotaExceeded(RequestError):
    reason = "quota_exceeded"


class InvalidRequest(RequestError):
    reason = "invalid_request"


class DeadlineExpired(RequestError):
    reason = "deadline_expired"


class UpstreamRejected(RequestError):
    reason = "upstream_rejected"


class UpstreamExhausted(RequestError):
    reason = "upstream_exhausted"


class UpstreamError(PipelineError):
    """One failed call to Claude.

    `error_class` is the metrics class: 4xx, 5xx, timeout or connection.
    `retry_after` is Claude's own advice in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        error_class: str,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
        retriable: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after
        self.is_retriable = retriable
        self.headers = headers or {}
