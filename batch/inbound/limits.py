"""The size and time limits of the reply endpoint, and the count of what it refused and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class InboundLimits:
    """CP-IS replies are a few kilobytes, sent one per connection or on a kept-alive one; far more is not Spine.

    Set in code, not in the job file: tests shorten the times.
    """

    max_body_bytes: int = 1 << 20
    """Refused from Content-Length before the body is read (413), and while a chunked body is read."""
    max_head_bytes: int = 64 << 10
    """The request line and headers."""
    handshake_timeout_s: float = 10.0
    """From TCP accept to a completed TLS handshake."""
    request_timeout_s: float = 30.0
    """From a request's first byte to its whole body: a slow head or body is cut off."""
    keep_alive_s: int = 15
    """An idle kept-alive connection is closed after this long."""
    max_connections: int = 32
    """Connections past the peer check; a request on one beyond this gets 503 and the connection closes."""
    max_handshakes: int = 256
    """TCP connections still in (or before) the TLS handshake; one beyond this is closed at once."""
    tls_close_timeout_s: float = 5.0
    """How long a closing connection waits for the peer's TLS close_notify."""
    shutdown_grace_s: float = 5.0
    """At stop, how long a request already being answered may take; idle connections close at once."""


class Refusal(StrEnum):
    """Why a connection or request was refused before (or instead of) reaching the reply workflow."""

    PEER_NOT_ALLOWED = "peer_not_allowed"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    TLS_HANDSHAKE_TIMEOUT = "tls_handshake_timeout"
    TOO_MANY_HANDSHAKES = "too_many_handshakes"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_LARGE = "too_large"
    REQUEST_TIMEOUT = "request_timeout"
    HTTP2 = "http2"
    UPGRADE = "upgrade"
    BAD_REQUEST = "bad_request"
    """Wrong path, wrong method, an unreadable Content-Length."""


@dataclass
class Refusals:
    """Counts by reason, for the run summary; updated on the event loop only."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: Refusal) -> None:
        self.counts[reason.value] = self.counts.get(reason.value, 0) + 1

    def get(self, reason: Refusal) -> int:
        return self.counts.get(reason.value, 0)
