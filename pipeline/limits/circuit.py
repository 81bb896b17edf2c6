"""A circuit breaker per upstream key: stop hammering Claude while it is down.

Closed, requests flow. When at least `threshold` of the last `window` answers
were outage failures (5xx, 529, timeouts, refused or reset connections; a 429 is
rate limiting, handled by the key's pause, and a 4xx is the request's fault), and
they are at least half of them, the circuit opens: nothing is sent
on that key for a backoff, then one request probes (half open). A probe that
succeeds closes the circuit; one that fails opens it again for twice as long, up
to `cap_s`. During an outage the key therefore sees one probe per backoff step,
not a retry storm; requests wait in the backlog (spending no attempts) until
their deadline or the upstream's recovery. A ratio, not "N in a row": with
hundreds of requests in flight, a storm failing a quarter of the calls has runs
of five failures every few seconds, and is not an outage.

Pure: an injected clock, no I/O; the key's gate asks `wait`, attempts report
`failed` and `succeeded`, and both return whether the state changed, so the
caller can log it and set `claude_upstream_circuit_open{key}`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # one probe may go


class Circuit:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        threshold: int = 5,
        base_s: float = 1.0,
        cap_s: float = 30.0,
        window: int = 20,
    ) -> None:
        self._clock = clock
        self.threshold = threshold
        self._recent: deque[bool] = deque(maxlen=window)  # True: an outage failure
        self._base_s = base_s
        self._cap_s = cap_s
        self.state = State.CLOSED
        self._backoff_s = base_s
        self._open_until = 0.0
        self._probe_out = False

    @property
    def open(self) -> bool:
        return self.state is not State.CLOSED

    def wait(self) -> float:
        """Seconds before a request may go on this key (0: now). A request that is
        told 0 while the circuit is half open is the probe: call `sent`."""
        if self.state is State.CLOSED:
            return 0.0
        now = self._clock()
        if self.state is State.OPEN:
            if now < self._open_until:
                return self._open_until - now
            self.state = State.HALF_OPEN
        return 0.0 if not self._probe_out else min(self._backoff_s, 1.0)

    def sent(self) -> None:
        """A request went out: while half open, it is the one probe."""
        if self.state is State.HALF_OPEN:
            self._probe_out = True

    def succeeded(self) -> bool:
        """Claude answered: close the circuit. True if it was open."""
        was_open = self.state is not State.CLOSED
        self.state = State.CLOSED
        self._recent.append(False)
        if was_open:
            self._recent.clear()
        self._backoff_s = self._base_s
        self._probe_out = False
        return was_open

    def failed(self) -> bool:
        """An outage failure: open after `threshold` in a row, or at once when the
        probe fails (twice the backoff). True if the circuit just opened."""
        now = self._clock()
        if self.state is State.HALF_OPEN or (self.state is State.OPEN and self._probe_out):
            self._backoff_s = min(self._cap_s, self._backoff_s * 2)
            self._open(now)
            return False  # it was open already: no new transition to report
        if self.state is State.OPEN:
            return False  # a request sent before it opened, failing late
        self._recent.append(True)
        failures = sum(self._recent)
        if failures >= self.threshold and failures * 2 >= len(self._recent):
            self._open(now)
            return True
        return False

    def _open(self, now: float) -> None:
        self.state = State.OPEN
        self._open_until = now + self._backoff_s
        self._probe_out = False

    @property
    def backoff_s(self) -> float:
        return self._backoff_s
