"""From a raw record to an admitted Job, or a RequestError saying why not.

The order is the security order: know the partner, check the signature over
the raw bytes, and only then parse what an authenticated partner sent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from pipeline import messages
from pipeline.errors import (
    AuthFailed,
    DeadlineExpired,
    InvalidRequest,
    Misplaced,
    PartnerDisabled,
    RequestError,
    SchemaError,
    SecretError,
    UnknownPartner,
)
from pipeline.lifecycle import bounded
from pipeline.lifecycle.checks import (
    check_envelope,
    check_identity,
    params_of,
    validate,
)
from pipeline.lifecycle.placement import partition_for
from pipeline.limits import autocache, tokens
from pipeline.limits.pricing import PriceTable
from pipeline.partners import Partner, Registry, partner_of_requests_topic
from pipeline.records import Admitted, ClaudeRequest, SourceRecord
from pipeline.schemas import Codec, read_body
from pipeline.security.signing import SecretResolver, verify

if TYPE_CHECKING:
    from pipeline.lifecycle.outcomes import Outcome, OutcomeBuilder

log = logging.getLogger("pipeline.lifecycle.intake")

#: Models without a price warned about, at most (names come from partners).
UNPRICED_WARNINGS = 256


class Rejected(Exception):
    """A record refused at intake, with what could be read of it."""

    def __init__(
        self,
        error: RequestError,
        partner_id: str | None,
        request_id: str | None,
        request: dict[str, Any] | None = None,
        *,
        respond: bool = True,
        verified: bool = False,
        replay_count: int = 0,
    ) -> None:
        super().__init__(error.detail)
        self.error = error
        self.partner_id = partner_id
        self.request_id = request_id
        self.request = request
        #: False when the record may be a copy of a genuine request: the
        #: original's outcome is the partner's, this one leaves a dead letter only.
        self.respond = respond
        #: The signature was verified before the record was refused (and so the
        #: replay count it carries is the partner's or a replay's, not a forger's).
        self.verified = verified
        self.replay_count = replay_count

    def outcome(self, builder: OutcomeBuilder, record: SourceRecord) -> Outcome:
        """The refusal's response, usage record and dead letter."""
        return builder.failure(
            record,
            self.error,
            partner_id=self.partner_id,
            request_id=self.request_id,
            request=self.request,
            respond=self.respond,
            verified=self.verified,
            replay_count=self.replay_count,
        )


def key_request_id(record: SourceRecord) -> str | None:
    """The record key is the request_id by contract; usable if it is sane UTF-8."""
    if not record.key or len(record.key) > 256:
        return None
    try:
        return record.key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def partner_secrets(partner: Partner, resolver: SecretResolver, now_ms: int) -> list[bytes]:
    """The secrets a signature may use now: current, plus the previous one in its grace."""
    secrets = [resolver.resolve(partner.signing_secret_ref)]
    if (
        partner.previous_signing_secret_ref
        and partner.previous_secret_expires_at_ms is not None
        and now_ms < partner.previous_secret_expires_at_ms
    ):
        # an unreadable old secret only shortens the grace window
        with contextlib.suppress(SecretError):
            secrets.append(resolver.resolve(partner.previous_signing_secret_ref))
    return secrets


#: The fields of a request a refusal may carry: what the outcome records name
#: (never its content: an invalid request's body is what it is refused for).
SUMMARY_FIELDS = ("request_id", "partner_id", "model", "created_at_ms")


def summary(request: Mapping[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in SUMMARY_FIELDS if k in request}


@dataclass(frozen=True)
class Examined:
    """What a decoded value says about itself: the request, its params or why they
    are invalid, and what planning needs (computed once: bounding a PDF reads all
    of it). Pure, so heavy records get it in the examiner process."""

    request: dict[str, Any]
    params: dict[str, Any] | None
    invalid: RequestError | None
    est_input_tokens: int = 0
    upper_input_tokens: int = 0
    cache_ttls: frozenset[str] = frozenset()
    #: The params as Claude's JSON body, when encoding them was worth doing early.
    body: bytes | None = None

    def without_content(self) -> Examined:
        """With a body, the request and params without what only the body needs
        (messages, system, tools): for the examiner to send back. Ten thousand
        messages took the worker 6-18 ms to unpickle, holding the GIL; the worker
        reads only the request's other fields, and calls Claude with the body."""
        if self.body is None or self.params is None:
            return self
        return replace(
            self,
            request={k: v for k, v in self.request.items() if k not in CONTENT_FIELDS},
            params={k: v for k, v in self.params.items() if k not in CONTENT_FIELDS},
        )


#: What a request's body carries that the worker never reads once it is encoded.
CONTENT_FIELDS = frozenset({"messages", "system", "tools"})


def examine_value(
    writer_schema: Any,
    reader_schema: Any,
    data: bytes,
    offset: int,
    partner: Partner,
    *,
    encode_body: bool = False,
    bounds: bounded.Bounds | None = None,
) -> Examined:
    """Decode a ClaudeRequest value (SchemaError when it is not one) and check it
    for `partner`, without raising for an invalid request (`Examined.invalid`).
    Its arrays are counted before it is decoded: one past a bound is refused
    without materialising the rest."""
    bounds = bounds or bounded.default_bounds()
    past = bounded.check(writer_schema, data, offset, bounds)
    if past is not None:
        return Examined(past[0], None, past[1])
    request = read_body("ClaudeRequest", writer_schema, reader_schema, data, offset)
    try:
        bounds.check_decoded(request)
        params = params_of(request)
        validate(request, params, partner)
        if partner.auto_cache:
            params = autocache.with_breakpoint(params) or params
    except RequestError as exc:
        # The refusal names the request, never carries it: an invalid body may be
        # millions of items, pickled back from the examiner for nothing.
        return Examined(summary(request), None, exc)
    return Examined(
        request,
        params,
        None,
        est_input_tokens=tokens.count_params(params),
        upper_input_tokens=tokens.upper_bound_params(params),
        cache_ttls=frozenset(tokens.cache_write_ttls(params)),
        body=messages.json_body(params) if encode_body else None,
    )


@dataclass(frozen=True)
class Verified:
    """A record whose partner is known and whose signature holds."""

    record: SourceRecord
    partner: Partner
    key_id: str | None
    replay_count: int
    now: float


class Intake:
    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        secrets: SecretResolver,
        signature_max_age_s: float,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        prices: PriceTable | None = None,
        max_value_bytes: int = 32 * 1024 * 1024,
        partitions: Callable[[str], Collection[int]] = lambda topic: (),
    ) -> None:
        self._partitions = partitions
        self._prices = prices or PriceTable()
        self._max_value = max_value_bytes
        self._registry = registry
        self._codec = codec
        self._secrets = secrets
        self._max_age = signature_max_age_s
        self._wall = wall
        self._mono = mono
        self._unpriced: set[str] = set()  # models warned about

    def _check_placement(self, record: SourceRecord, request: dict[str, Any]) -> None:
        """Every copy of a request_id must land in one partition, so one worker reads
        them all in order: the key is the signed request_id, in the partition that
        Kafka's default partitioner gives it. Raises Misplaced."""
        signed_id = str(request.get("request_id") or "").encode("utf-8", "surrogatepass")
        # Every partition count the topic had while this worker ran, the current
        # first: after partitions are added, a producer with an older view puts a
        # key where the older count said (for its metadata max age): placed right.
        counts = list(self._partitions(record.topic))
        homes = list(dict.fromkeys(partition_for(signed_id, n) for n in counts))
        if record.key is None or record.key != signed_id:
            # The signature covers the value, not the key: a signed record moved
            # to another key (and so another partition) is a replay in disguise.
            raise Misplaced(
                "the record key must be the request_id the value was signed with",
                record.topic,
                homes,
            )
        if counts and record.partition not in homes:
            raise Misplaced(
                f"record in partition {record.partition}, but its key belongs in partition "
                f"{homes[0]} of {counts[0]} (Kafka's default partitioner, murmur2; "
                "librdkafka clients need partitioner=murmur2_random)",
                record.topic,
                homes,
            )

    def admit(self, record: SourceRecord) -> Admitted:
        """Admit a record or raise Rejected (which carries the dead-letter reason)."""
        return self.admit_verified(self.authenticate(record))

    def authenticate(self, record: SourceRecord) -> Verified:
        """The checks that come before anything is parsed: the partner, the
        envelope's bounds, the signature. Raises Rejected."""
        topic_partner = partner_of_requests_topic(record.topic)
        key_id = key_request_id(record)
        if topic_partner is None:
            raise Rejected(UnknownPartner(f"not a request topic: {record.topic}"), None, key_id)
        partner = self._registry.get(topic_partner)
        if partner is None:
            raise Rejected(
                UnknownPartner(f"partner {topic_partner!r} is not registered"),
                topic_partner,
                key_id,
            )
        if record.value is None:
            raise Rejected(SchemaError("empty record value (tombstone)"), topic_partner, key_id)
        try:
            check_envelope(record, self._max_value)
        except AuthFailed as exc:
            raise Rejected(exc, topic_partner, key_id) from None
        now = self._wall()
        try:
            secrets = partner_secrets(partner, self._secrets, int(now * 1000))
            replay_count = verify(
                record.header_map(),
                record.value,
                topic_partner=topic_partner,
                secrets=secrets,
                now=now,
                max_age_s=self._max_age,
            )
        except SecretError as exc:
            # the detail names a file or a variable of the worker's: ops see it in
            # the log and the dead letter, the partner a reason only
            raise Rejected(
                AuthFailed(
                    f"cannot read the partner's signing secret: {exc}",
                    public="the signing secret cannot be read now, so the signature "
                    "cannot be checked (the operator is told why)",
                ),
                topic_partner,
                key_id,
            ) from None
        except AuthFailed as exc:
            raise Rejected(exc, topic_partner, key_id) from None
        return Verified(record, partner, key_id, replay_count, now)

    def frame(self, value: bytes) -> tuple[Any, Any, int]:
        """A ClaudeRequest value's writer and reader schemas and where its Avro body
        starts (its header only); SchemaError when the framing or schema is wrong."""
        writer, offset = self._codec.framing("ClaudeRequest", value)
        return writer, self._codec.store.current["ClaudeRequest"].parsed, offset

    def admit_verified(
        self, verified: Verified, examined: Examined | SchemaError | None = None
    ) -> Admitted:
        """Decode and check a record whose signature holds. Raises Rejected.
        `examined`: what `examine_value` found (or why it could not decode), when it
        ran elsewhere (a heavy record, in the examiner process); else it runs here."""
        record, partner, now = verified.record, verified.partner, verified.now
        topic_partner = partner.partner_id

        def rejected(
            exc: RequestError,
            request_id: str | None,
            request: dict[str, Any] | None = None,
            *,
            respond: bool = True,
        ) -> Rejected:
            return Rejected(
                exc,
                topic_partner,
                request_id,
                summary(request) if request is not None else None,
                respond=respond,
                verified=True,
                replay_count=verified.replay_count,
            )

        if examined is None:
            value = record.value or b""
            try:
                writer, reader, offset = self.frame(value)
                examined = examine_value(writer, reader, value, offset, partner)
            except SchemaError as exc:
                raise rejected(exc, verified.key_id) from None
        if isinstance(examined, SchemaError):
            raise rejected(examined, verified.key_id)
        request = examined.request
        request_id = str(request.get("request_id") or "") or verified.key_id
        try:
            check_identity(request, topic_partner)
        except RequestError as exc:
            raise rejected(exc, request_id, request) from None
        try:
            self._check_placement(record, request)
        except Misplaced as exc:
            # Genuine bytes where they do not belong: a replay in disguise, or a
            # producer with the wrong key or partitioner. A copy at home is the one
            # served; with none the partner is told (pipeline/kafka/homes.py decides).
            raise rejected(exc, request_id, request, respond=False) from None
        try:
            if not partner.enabled:
                raise PartnerDisabled(f"partner {topic_partner!r} is disabled")
            if examined.invalid is not None:
                raise examined.invalid
            bounded.check_times(request, now)
            deadline = request.get("deadline_ms")
            if deadline is not None and now * 1000 >= deadline:
                raise DeadlineExpired(
                    f"deadline passed {now * 1000 - deadline:.0f} ms before intake"
                )
            self._check_priced(partner, str(request["model"]))
        except RequestError as exc:
            raise rejected(exc, request_id, request) from None
        return self._admitted(record, partner, examined, verified.replay_count)

    def _admitted(
        self, record: SourceRecord, partner: Partner, examined: Examined, replay_count: int
    ) -> Admitted:
        assert examined.params is not None  # noqa: S101 (no `invalid`: params were read)
        return Admitted(
            record=record,
            partner=partner,
            request=cast(ClaudeRequest, examined.request),
            params=examined.params,
            replay_count=replay_count,
            received_mono=self._mono(),
            est_input_tokens=examined.est_input_tokens,
            body=examined.body,
            **self._worst_case(examined.request, examined),
        )

    def readmit(self, record: SourceRecord, replay_count: int) -> Admitted:
        """A request admitted before (its record kept by the batch lane), decoded
        again for its partner as registered now: its signature and age are not
        checked again (they held at intake, maybe hours ago). Raises RequestError."""
        partner_id = partner_of_requests_topic(record.topic) or ""
        partner = self._registry.get(partner_id)
        if partner is None:
            raise UnknownPartner(f"partner {partner_id!r} was removed")
        value = record.value or b""
        writer, reader, offset = self.frame(value)
        examined = examine_value(writer, reader, value, offset, partner)
        if examined.invalid is not None:
            raise examined.invalid
        return self._admitted(record, partner, examined, replay_count)

    def _check_priced(self, partner: Partner, model: str) -> None:
        """A model the price table does not know would cost $0, so a USD budget
        would never stop it: refused for a partner with one; for the others a
        warning, once a model, that their usage records say $0."""
        if self._prices.price(model) is not None:
            return
        if partner.monthly_budget_usd is not None:
            raise InvalidRequest(f"no price for model {model}; add it with PIPELINE_PRICES_FILE")
        if model not in self._unpriced and len(self._unpriced) < UNPRICED_WARNINGS:
            self._unpriced.add(model)
            log.warning(
                "no price for model %s: its usage is recorded at $0 "
                "(add it with PIPELINE_PRICES_FILE)",
                model,
                extra={"model": model, "partner": partner.partner_id},
            )

    def _worst_case(self, request: dict[str, Any], examined: Examined) -> dict[str, float]:
        """The most a request can spend (what budgets reserve): every input token it
        could hold, at the dearest cache-write price if it has breakpoints, and all of
        max_tokens."""
        upper, max_tokens = examined.upper_input_tokens, int(request["max_tokens"])
        usd = self._prices.worst_case(
            str(request["model"]), upper, max_tokens, cache_ttls=examined.cache_ttls
        )
        return {"worst_tokens": float(upper + max_tokens), "worst_usd": usd}
