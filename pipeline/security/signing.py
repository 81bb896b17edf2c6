"""Request signing, verification, secret references and redaction.

A partner signs each record: ``x-signature = hex(HMAC-SHA256(secret,
timestamp + "." + value))`` with ``x-timestamp`` in unix seconds and
``x-partner-id``. The worker checks all three, in constant time, against the
partner's current secret (and, during a rotation's grace window, the previous
one). Ops replaying a dead letter sign it afresh and add ``x-replay-count``
with a signature binding it, so a copy of a replay cannot pass as a new one.

Secrets are referenced, never stored: ``env:NAME`` or ``file:PATH`` (re-read
when the file changes).
"""

from __future__ import annotations

import hashlib
import hmac
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import AuthFailed, SecretError

H_PARTNER = "x-partner-id"
H_TIMESTAMP = "x-timestamp"
H_SIGNATURE = "x-signature"
H_REPLAY_COUNT = "x-replay-count"
H_REPLAY_TIMESTAMP = "x-replay-timestamp"
H_REPLAY_SIGNATURE = "x-replay-signature"

#: How far in the future a timestamp may be (clock skew between hosts).
MAX_CLOCK_SKEW_S = 60.0


def sign(secret: bytes, timestamp: int, value: bytes) -> str:
    """The contract's signature: lowercase hex HMAC-SHA256 over ``timestamp.value``."""
    return hmac.new(secret, str(timestamp).encode() + b"." + value, hashlib.sha256).hexdigest()


def signed_headers(
    partner_id: str, secret: bytes, value: bytes, now: float | None = None
) -> list[tuple[str, bytes]]:
    """The three headers a partner puts on a request record."""
    ts = int(time.time() if now is None else now)
    return [
        (H_PARTNER, partner_id.encode()),
        (H_TIMESTAMP, str(ts).encode()),
        (H_SIGNATURE, sign(secret, ts, value).encode()),
    ]


def replay_signature(secret: bytes, timestamp: int, replay_count: int, signature: str) -> str:
    """Binds a replay count to a (fresh) signature, so it cannot be bumped."""
    message = f"{timestamp}.{replay_count}.{signature}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def replay_headers(
    headers: Iterable[tuple[str, bytes]],
    partner_id: str,
    secret: bytes,
    value: bytes,
    replay_count: int,
    now: float,
) -> list[tuple[str, bytes]]:
    """Headers for re-producing a dead letter: the partner's other headers, a
    fresh signature, and the replay count signed with it (for `dlq replay`)."""
    own = {H_PARTNER, H_TIMESTAMP, H_SIGNATURE, H_REPLAY_COUNT, H_REPLAY_SIGNATURE}
    kept = [(k, v) for k, v in headers if k not in own]
    signed = signed_headers(partner_id, secret, value, now)
    ts = int(dict(signed)[H_TIMESTAMP])
    signature = dict(signed)[H_SIGNATURE].decode()
    return [
        *kept,
        *signed,
        (H_REPLAY_COUNT, str(replay_count).encode()),
        (H_REPLAY_SIGNATURE, replay_signature(secret, ts, replay_count, signature).encode()),
    ]


def _header_text(headers: Mapping[str, bytes], name: str) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


#: Unix seconds have 10 digits until the year 2286: more is not a timestamp.
MAX_TIMESTAMP_DIGITS = 12
#: A replay count travels in DeadLetter.replay_count (an Avro int): six digits
#: is far past any sane replay policy and far inside the int.
MAX_REPLAY_DIGITS = 6


def _bounded_digits(text: str, most: int) -> bool:
    """ASCII digits only, at most `most` of them: Python's int() would take
    underscores, signs, other scripts' digits and numbers of any size."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _check_age(ts_text: str | None, now: float, max_age_s: float, what: str) -> None:
    if ts_text is None:
        raise AuthFailed(f"missing header {what}")
    if not _bounded_digits(ts_text, MAX_TIMESTAMP_DIGITS):
        raise AuthFailed(f"malformed {what}: not unix seconds")
    ts = int(ts_text)
    age = now - ts
    if age > max_age_s:
        raise AuthFailed(f"stale signature: {what} is {age:.0f} s old (max {max_age_s:.0f} s)")
    if age < -MAX_CLOCK_SKEW_S:
        raise AuthFailed(f"{what} is {-age:.0f} s in the future")


def _matches(secrets: Iterable[bytes], message: bytes, signature: str, value: bytes = b"") -> bool:
    """`signature` is the HMAC of `message + value` under one of `secrets` (the
    value fed apart: a 30 MB record is never copied to be signed)."""
    ok = False
    for secret in secrets:
        mac = hmac.new(secret, message, hashlib.sha256)
        mac.update(value)
        expected = mac.hexdigest()
        # compare every candidate: no early exit that times which secret matched
        ok |= hmac.compare_digest(expected, signature)
    return ok


def verify(
    headers: Mapping[str, bytes],
    value: bytes,
    *,
    topic_partner: str,
    secrets: Iterable[bytes],
    now: float,
    max_age_s: float,
) -> int:
    """Check a request record's signature; return its replay count (0 if original).

    Raises AuthFailed with the failed check in its message.
    """
    secrets = list(secrets)
    partner = _header_text(headers, H_PARTNER)
    if partner is None:
        raise AuthFailed(f"missing header {H_PARTNER}")
    if partner != topic_partner:
        raise AuthFailed(f"{H_PARTNER} {partner!r} does not match the topic's {topic_partner!r}")
    signature = _header_text(headers, H_SIGNATURE)
    if signature is None:
        raise AuthFailed(f"missing header {H_SIGNATURE}")
    ts_text = _header_text(headers, H_TIMESTAMP)
    if ts_text is None:
        raise AuthFailed(f"missing header {H_TIMESTAMP}")
    if not _matches(secrets, ts_text.encode() + b".", signature, value):
        raise AuthFailed("signature mismatch: not signed with the partner's secret")
    _check_age(ts_text, now, max_age_s, H_TIMESTAMP)
    count_text = _header_text(headers, H_REPLAY_COUNT)
    if count_text is None:
        return 0
    # A replay by ops: its count is signed, so a copy cannot claim a new one.
    replay_sig = _header_text(headers, H_REPLAY_SIGNATURE)
    if not _bounded_digits(count_text, MAX_REPLAY_DIGITS) or replay_sig is None:
        raise AuthFailed(f"malformed {H_REPLAY_COUNT} or missing {H_REPLAY_SIGNATURE}")
    message = f"{ts_text}.{count_text}.{signature}".encode()
    if not _matches(secrets, message, replay_sig):
        raise AuthFailed("replay signature mismatch")
    return int(count_text)


# -- secret references --------------------------------------------------------

# The offending value is not echoed: a secret pasted where a reference belongs
# must not end up in a terminal scrollback or a log.
#: The largest secret file read (a key, a keyring): anything larger is refused.
MAX_SECRET_FILE_BYTES = 64 * 1024

_BAD_REF = "a secret reference must be env:NAME or file:PATH (the value given is not shown)"


@dataclass
class _FileCache:
    stamp: tuple[int, int]  # (mtime_ns, size)
    value: bytes
    checked_at: float


class SecretResolver:
    """Resolve ``env:NAME`` and ``file:PATH``; files are re-read when they change.

    A file is stat()ed at most once per `recheck_s`, so resolving on every
    request costs nothing measurable.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = 1.0,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        self._env = env
        self._clock = clock
        self._recheck_s = recheck_s
        self._files: dict[str, _FileCache] = {}
        #: Told every secret value read (the log redactor learns them this way).
        self._on_secret = on_secret

    def resolve(self, ref: str) -> bytes:
        scheme, sep, target = ref.partition(":")
        if not sep or not target or scheme not in ("env", "file"):
            raise SecretError(_BAD_REF)
        if scheme == "env":
            value = self._env.get(target)
            if not value:
                raise SecretError(f"environment variable {target} (from {ref}) is not set")
            self._learned(value)
            return value.encode()
        return self._read_file(target)

    def _read_file(self, path: str) -> bytes:
        now = self._clock()
        cached = self._files.get(path)
        if cached is not None and now - cached.checked_at < self._recheck_s:
            return cached.value
        try:
            st = Path(path).stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if cached is not None and cached.stamp == stamp:
                cached.checked_at = now
                return cached.value
            if not stat.S_ISREG(st.st_mode):
                # /dev/zero, a FIFO, a directory: reading could block or never end
                raise SecretError(f"secret file {path} is not a regular file")
            if st.st_size > MAX_SECRET_FILE_BYTES:
                raise SecretError(
                    f"secret file {path} is {st.st_size:,} bytes (at most "
                    f"{MAX_SECRET_FILE_BYTES:,})"
                )
            with open(path, "rb") as f:
                value = f.read(MAX_SECRET_FILE_BYTES + 1).strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not value:
            raise SecretError(f"secret file {path} is empty")
        if len(value) > MAX_SECRET_FILE_BYTES:
            raise SecretError(f"secret file {path} grew past {MAX_SECRET_FILE_BYTES:,} bytes")
        self._files[path] = _FileCache(stamp, value, now)
        self._learned(value.decode("utf-8", "replace"))
        return value

    def refresh(self) -> None:
        """Re-check every file read so far (run it off the event loop, every
        `recheck_s`): resolving on the event loop then finds them fresh."""
        for path in list(self._files):
            cached = self._files.get(path)
            if cached is None:
                continue
            cached.checked_at = float("-inf")
            try:
                self._read_file(path)
            except SecretError:
                self._files.pop(path, None)  # the next resolve says what is wrong

    def _learned(self, secret: str) -> None:
        if self._on_secret is not None:
            self._on_secret(secret)


def validate_ref(ref: str) -> str:
    """Check a reference's shape (not its value) for the partner registry."""
    if not isinstance(ref, str):
        raise SecretError(_BAD_REF)
    scheme, sep, target = ref.partition(":")
    if scheme not in ("env", "file") or not sep or not target:
        raise SecretError(_BAD_REF)
    if not target.isprintable() or len(ref) > MAX_REF_CHARS:
        # a NUL byte stops os.path with ValueError; a newline forges log lines
        raise SecretError("a secret reference must be printable text of at most 1024 characters")
    return ref


MAX_REF_CHARS = 1024


#: Headers a dead letter never keeps: signatures are credentials for their record.
SIGNATURE_HEADERS = frozenset({H_SIGNATURE, H_REPLAY_SIGNATURE})
