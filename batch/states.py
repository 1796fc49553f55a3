"""The states a run, a child, an attempt and an inbound message can be in: one definition each.

The store's CHECK constraints, the pipeline, the correlator and the reports all use these enums, so a state
cannot be spelt two ways. Values are the strings stored in SQLite and written to reports.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    # An internal failure stopped the run (exit 70); a rerun with the same input resumes it.
    FAILED = "failed"


class AttemptStatus(StrEnum):
    """One query attempt (new M, C and Q ids), recorded after its rate slot and before its POST."""

    SENDING = "sending"
    """Durable before the POST; with no result recorded the query may be at Spine (a kill can leave this)."""
    ACCEPTED = "accepted"
    """Spine acknowledged the POST (HTTP 202); a reply is due."""
    UNANSWERED = "unanswered"
    """The request went out but no HTTP answer came back (read timeout): it may be at Spine."""
    NOT_SENT = "not_sent"
    """It never reached Spine, or Spine refused it with a retriable fault until resends ran out."""
    REJECTED = "rejected"
    """Spine refused it permanently; the child ends `error`."""
    ANSWERED = "answered"
    """A business reply for it was stored."""
    TIMED_OUT = "timed_out"
    """No reply within `reply_timeout_s` of its 202 (or its send when no 202 came)."""

    @property
    def counts(self) -> bool:
        """Whether the POST left us: it counts towards `max_attempts` and the reports' `attempts`."""
        return self is not AttemptStatus.NOT_SENT

    @property
    def awaits_reply(self) -> bool:
        """Whether a reply may still come that nobody has waited out yet."""
        return self in _AWAITING


_AWAITING = frozenset({AttemptStatus.SENDING, AttemptStatus.ACCEPTED, AttemptStatus.UNANSWERED})


class Outcome(StrEnum):
    """Exactly one per input row in `results.parquet`."""

    FLAGGED = "flagged"
    NOT_FLAGGED = "not_flagged"
    INVALID_NHS_NUMBER = "invalid_nhs_number"
    ERROR = "error"
    NO_REPLY = "no_reply"
    OUTSIDE_WINDOW = "outside_window"
    """Not queried on purpose: no appointment date, or not within `[input] window_days` (no legitimate
    relationship to query for)."""

    @property
    def final(self) -> bool:
        """A definite answer about the row (exit code 0); `error` and `no_reply` need a look (exit 1)."""
        return self in (
            Outcome.FLAGGED,
            Outcome.NOT_FLAGGED,
            Outcome.INVALID_NHS_NUMBER,
            Outcome.OUTSIDE_WINDOW,
        )


# Outcomes a queried child can end with (what the `queries` table holds).
CHILD_OUTCOMES = (Outcome.FLAGGED, Outcome.NOT_FLAGGED, Outcome.ERROR, Outcome.NO_REPLY)


class Disposition(StrEnum):
    """How an inbound message was filed."""

    RESOLVED = "resolved"
    """The first business answer for its child: it decides the outcome."""
    SUPERSEDED = "superseded"
    """A business answer for a child another reply had already answered."""
    INFORMATIONAL = "informational"
    """Correlated but says nothing about the child (an MCCI AA)."""
    ORPHAN = "orphan"
    """Names no attempt we know."""
    QUARANTINED = "quarantined"
    """Names a different child from the attempt it refers to; never reported."""
    UNPARSEABLE = "unparseable"
    """Its HL7 part could not be read."""
    REJECTED = "rejected"
    """Its ebXML header failed a check (not Spine's party or CPA, not for us): answered with a MessageError."""
    DUPLICATE = "duplicate"
    """Its ebXML MessageId was seen before: acknowledged again, not stored again."""


def check_constraint(column: str, values: type[StrEnum] | tuple[StrEnum, ...]) -> str:
    """`CHECK (column IN (...))` for an enum or a subset of one (values are fixed literals, never input)."""
    members = ", ".join(f"'{member.value}'" for member in values)
    return f"CHECK ({column} IN ({members}))"
