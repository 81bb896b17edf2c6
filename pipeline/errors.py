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
    │   ├── UpstreamExhausted       retries used up          reason upstream_exhausted
    │   ├── Duplicate               a later copy of a request_id  reason duplicate
    │   └── InternalError           a bug in the pipeline    reason internal_error
    └── UpstreamError               one failed Claude attempt; `retriable` says whether
                                    the retry policy may try again (429, 5xx, timeout,
                                    connection) or must give up (other 4xx)

Like aiokafka's `KafkaError.retriable`, each class says whether trying again can
help, and callers ask the error. Errors carry the data a person needs to act
(partner, request_id, status, retry_after) and never a secret or prompt text.

One error policy, named per stage (`Stage`): whatever a stage did not expect is a
bug in our code. It fails that one request with an `internal_error` dead letter
and an error log line with the traceback (`internal`); it is never retried as if
it were a network error.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    """Why a request ended without an answer: the dead-letter reasons, in Avro enum order."""

    SCHEMA_ERROR = "schema_error"
    AUTH_FAILED = "auth_failed"
    UNKNOWN_PARTNER = "unknown_partner"
    PARTNER_DISABLED = "partner_disabled"
    QUOTA_EXCEEDED = "quota_exceeded"
    INVALID_REQUEST = "invalid_request"
    UPSTREAM_REJECTED = "upstream_rejected"
    UPSTREAM_EXHAUSTED = "upstream_exhausted"
    DEADLINE_EXPIRED = "deadline_expired"
    DUPLICATE = "duplicate"
    INTERNAL_ERROR = "internal_error"


#: The dead-letter reasons of the contract, in the order of the Avro enum.
REASONS = tuple(r.value for r in Reason)

#: Never replayed, whatever is asked: the record was not (or not shown to be) the
#: partner's own (auth_failed, unknown_partner), cannot be read (schema_error), or
#: is a copy of a request that has its own outcome (duplicate).
NEVER_REPLAYED = frozenset(
    {Reason.AUTH_FAILED, Reason.UNKNOWN_PARTNER, Reason.SCHEMA_ERROR, Reason.DUPLICATE}
)


class PipelineError(Exception):
    #: Whether trying the same thing again can help.
    retriable: bool = False


class ConfigError(PipelineError):
    """Settings, a partner registry or a command-line argument is invalid."""


class SecretError(PipelineError):
    """A secret reference (env:NAME, file:PATH) cannot be resolved."""


class BrokerError(PipelineError):
    """Kafka is unreachable or refused an operation."""

    retriable = True


class RequestError(PipelineError):
    """A request that cannot be served: it ends as a dead letter with `reason`."""

    reason: ClassVar[Reason] = Reason.INVALID_REQUEST
    #: Whether a dead letter copies a heavy record's payload (to replay it).
    copy_payload: ClassVar[bool] = True

    def __init__(
        self,
        detail: str,
        *,
        attempts: int = 0,
        error_type: str | None = None,
        public: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.attempts = attempts
        self.error_type = error_type
        #: What the partner's response says, when `detail` (for the log and the
        #: dead letter, which ops read) names what partners must not see.
        self.public = detail if public is None else public


class SchemaError(RequestError):
    reason = Reason.SCHEMA_ERROR


class AuthFailed(RequestError):
    reason = Reason.AUTH_FAILED


class Misplaced(AuthFailed):
    """A signed record in a partition (or under a key) its request_id does not put
    it in. `homes`: the partitions of `topic` where that request_id belongs (one per
    partition count the topic has had while the worker ran)."""

    def __init__(self, detail: str, topic: str, homes: list[int]) -> None:
        super().__init__(detail)
        self.topic = topic
        self.homes = homes


class UnknownPartner(RequestError):
    reason = Reason.UNKNOWN_PARTNER


class PartnerDisabled(RequestError):
    reason = Reason.PARTNER_DISABLED


class QuotaExceeded(RequestError):
    reason = Reason.QUOTA_EXCEEDED


class InvalidRequest(RequestError):
    reason = Reason.INVALID_REQUEST


class TooLarge(InvalidRequest):
    """A request past a bound on its arrays (pipeline/lifecycle/bounded.py). Its dead letter
    keeps no copy of a heavy payload: the same bytes would be refused again."""

    copy_payload = False


class DeadlineExpired(RequestError):
    reason = Reason.DEADLINE_EXPIRED


class UpstreamRejected(RequestError):
    reason = Reason.UPSTREAM_REJECTED


class UpstreamExhausted(RequestError):
    reason = Reason.UPSTREAM_EXHAUSTED


class Duplicate(RequestError):
    reason = Reason.DUPLICATE


class InternalError(RequestError):
    reason = Reason.INTERNAL_ERROR


class NotSent(PipelineError):
    """The call to Claude could not even be made (its body could not be built):
    nothing reached Claude, so nothing may be charged for it."""


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
        self.retriable = retriable
        self.headers = headers or {}


class Stage(StrEnum):
    """Where an unexpected exception happened, for the one error policy."""

    INTAKE = "intake"
    UPSTREAM = "upstream"
    PUBLISHING = "publishing"
    COMPLETION = "completion"


def internal(
    stage: Stage, exc: BaseException, log: logging.Logger, fields: dict[str, object]
) -> InternalError:
    """A bug met at `stage`: log it with its traceback; the request fails, unretried.

    The dead letter names the stage and the exception's type only: its text may
    quote the request (prompt text belongs in no dead letter detail).
    """
    log.error(
        "internal error: the request fails (a bug, not retried)",
        exc_info=exc,
        extra={**fields, "stage": stage.value, "error": type(exc).__name__},
    )
    return InternalError(
        f"internal error at {stage.value}: {type(exc).__name__} (see the worker's log)"
    )
