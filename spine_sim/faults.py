"""Fault injection for the simulated Spine: configuration and a deterministic decider.

Each fault has a rate in 0..1. Whether a fault hits a query is decided from a hash of (seed, fault name, NHS
number, how many times that number was queried before), never from arrival order or a shared random stream,
so a rerun with the same seed injects the same faults into the same queries however the client interleaves
its requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Faults that stop the query being processed; at most one applies, the first in this order.
REJECTING_FAULTS = ("connection_reset", "soap_fault_permanent", "soap_fault_retriable", "message_error")
# Faults that shape how an accepted query is answered; they combine.
REPLY_FAULTS = (
    "drop_reply",
    "duplicate_reply",
    "duplicate_reply_new_id",
    "reorder_replies",
    "late_reply",
    "reply_before_accept",
    "mcci_error_reply",
    "malformed_reply",
    "unknown_reply",
    "slow_accept",
)
FAULT_NAMES = frozenset(REJECTING_FAULTS + REPLY_FAULTS)

RETRIABLE_FAULT_CODES = ("200", "206", "208")
PERMANENT_FAULT_CODE = "101"


class FaultConfigError(ValueError):
    """An unknown fault name, a rate outside 0..1, or a negative delay."""


@dataclass(frozen=True)
class FaultConfig:
    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    # Meant to exceed the client's reply timeout (60 s by default).
    late_delay_s: float = 90.0
    slow_accept_s: float = 5.0
    # A reordered reply is held back until this many held replies have collected (then they go out in
    # reverse order), until a reply that was not held goes out first, or until the hold time runs out.
    reorder_window: int = 2
    reorder_hold_s: float = 5.0

    def __post_init__(self) -> None:
        for name, rate in self.rates.items():
            if name not in FAULT_NAMES:
                raise FaultConfigError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULT_NAMES))}")
            if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                raise FaultConfigError(f"fault {name!r}: rate must be within 0..1")
        if min(self.late_delay_s, self.slow_accept_s, self.reorder_hold_s) < 0:
            raise FaultConfigError("fault delays must not be negative")
        if self.reorder_window < 1:
            raise FaultConfigError("reorder_window must be at least 1")

    def rate(self, name: str) -> float:
        return float(self.rates.get(name, 0.0))


def parse_fault_option(option: str) -> tuple[str, float]:
    """``NAME=RATE`` from the command line."""
    name, sep, value = option.partition("=")
    name = name.strip()
    if not sep:
        raise FaultConfigError(f"fault option {option!r} is not NAME=RATE")
    if name not in FAULT_NAMES:
        raise FaultConfigError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULT_NAMES))}")
    try:
        rate = float(value)
    except ValueError:
        raise FaultConfigError(f"fault {name!r}: rate {value!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:
        raise FaultConfigError(f"fault {name!r}: rate must be within 0..1")
    return name, rate


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one query. ``injected`` lists the faults that took effect, for the stats."""

    reject: str | None = None
    soap_fault_code: str | None = None
    message_error_status: int = 500
    slow_accept: bool = False
    reply_before_accept: bool = False
    drop_reply: bool = False
    mcci_error_reply: bool = False
    malformed_reply: bool = False
    duplicate_reply: bool = False
    duplicate_reply_new_id: bool = False
    reorder_replies: bool = False
    late_reply: bool = False
    unknown_reply: bool = False

    @property
    def injected(self) -> tuple[str, ...]:
        if self.reject is not None:
            return (self.reject,)
        return tuple(name for name in REPLY_FAULTS if getattr(self, name))


NO_FAULTS = FaultDecision()


class FaultDecider:
    def __init__(self, config: FaultConfig) -> None:
        self.config = config

    def _draw(self, nhs_number: str, occurrence: int, label: str) -> float:
        """A uniform number in [0, 1) fixed by (seed, label, number, occurrence)."""
        key = f"{self.config.seed}|{label}|{nhs_number}|{occurrence}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _hits(self, nhs_number: str, occurrence: int, name: str) -> bool:
        rate = self.config.rate(name)
        return rate > 0.0 and self._draw(nhs_number, occurrence, name) < rate

    def decide(self, nhs_number: str, occurrence: int) -> FaultDecision:
        """Faults for the query that is the ``occurrence``-th (from 0) query for this number."""
        for name in REJECTING_FAULTS:
            if self._hits(nhs_number, occurrence, name):
                return self._rejection(name, nhs_number, occurrence)
        # Keyed by REPLY_FAULTS, which name FaultDecision's boolean fields.
        flags: dict[str, Any] = {name: self._hits(nhs_number, occurrence, name) for name in REPLY_FAULTS}
        if flags["reply_before_accept"]:
            # Delivered inline before the 202, so there is nothing to delay or hold back.
            flags["late_reply"] = flags["reorder_replies"] = False
        if flags["drop_reply"]:
            # Nothing to send, so nothing to corrupt, repeat, delay or reorder; an unknown reply still goes.
            for name in REPLY_FAULTS:
                if name not in ("drop_reply", "unknown_reply", "slow_accept"):
                    flags[name] = False
        if not any(flags.values()):
            return NO_FAULTS
        return FaultDecision(**flags)

    def _rejection(self, name: str, nhs_number: str, occurrence: int) -> FaultDecision:
        if name == "soap_fault_retriable":
            index = int(self._draw(nhs_number, occurrence, "soap_fault_retriable.code") * 3)
            return FaultDecision(reject=name, soap_fault_code=RETRIABLE_FAULT_CODES[index])
        if name == "soap_fault_permanent":
            return FaultDecision(reject=name, soap_fault_code=PERMANENT_FAULT_CODE)
        if name == "message_error":
            # Spine sends a MessageError with either status; clients must read the body of a 200.
            status = 200 if self._draw(nhs_number, occurrence, "message_error.status") < 0.5 else 500
            return FaultDecision(reject=name, message_error_status=status)
        return FaultDecision(reject=name)
