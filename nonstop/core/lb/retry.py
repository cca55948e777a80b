"""When a failed proxied request may be retried on another backend.

Role: the rules, as one pure function plus a retry budget:

- Retried only for failures where the backend certainly produced no response: a connect
  failure, a reset/EOF before the first response byte, or the backend marked down while
  the request was in flight (the shell aborts it). Timeouts and failures after the
  response started are never retried (the client may already have part of the answer,
  and a slow backend is not a dead one).
- Idempotent methods (RFC 9110 §9.2.2) are retried when the request can be replayed
  (the shell kept its head and body). Other methods only when nothing at all was sent.
- At most ``max_retries`` retries, never on a backend already tried (the pool filters),
  and only while the ``RetryBudget`` has a token: each request deposits ``ratio`` tokens,
  each retry spends one, so a pool that fails everything cannot multiply load by
  ``max_retries``.

Must not: do I/O or know about sockets; the shell reports what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Failure(str, Enum):
    CONNECT = "connect"
    RESET_BEFORE_RESPONSE = "reset-before-response"
    BACKEND_DOWN = "backend-down"
    TIMEOUT = "timeout"
    RESET_AFTER_RESPONSE_STARTED = "reset-after-response-started"


RETRYABLE = frozenset({Failure.CONNECT, Failure.RESET_BEFORE_RESPONSE, Failure.BACKEND_DOWN})


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    reason: str


def decide_retry(
    method: bytes,
    failure: Failure,
    *,
    sent_anything: bool,
    replayable: bool,
    retries_done: int,
    max_retries: int,
    budget_ok: bool,
) -> RetryDecision:
    if failure not in RETRYABLE:
        return RetryDecision(False, f"{failure.value} is not retried")
    if retries_done >= max_retries:
        return RetryDecision(False, f"retries exhausted ({max_retries})")
    if sent_anything:
        if method not in IDEMPOTENT_METHODS:
            return RetryDecision(False, f"{method.decode(errors='replace')} is not idempotent and was sent")
        if not replayable:
            return RetryDecision(False, "request body was streamed and cannot be replayed")
    if not budget_ok:
        return RetryDecision(False, "retry budget exhausted")
    return RetryDecision(True, f"{failure.value}: retrying on another backend")


class RetryBudget:
    """Token bucket: ``ratio`` tokens per request, one per retry, ``floor`` to start with
    (so a quiet balancer can still retry), capped at ``cap``."""

    __slots__ = ("ratio", "cap", "tokens")

    def __init__(self, ratio: float, floor: float = 20.0, cap: float = 200.0) -> None:
        self.ratio = ratio
        self.cap = max(cap, floor)
        self.tokens = floor

    def on_request(self) -> None:
        self.on_requests(1)

    def on_requests(self, count: int) -> None:
        """Deposit for ``count`` requests at once (the proxy credits a batch a few times a second)."""
        tokens = self.tokens + self.ratio * count
        self.tokens = tokens if tokens < self.cap else self.cap

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
