"""The arrival log: one record per query POST, for crash tests and benchmarks that watch Spine's side.

With ``--log-arrivals`` the simulator prints each as a line ``arrival {json}`` on stdout, flushed at once,
so a test can act (kill the client, say) as soon as Spine has seen a given number of queries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, TextIO

ARRIVAL_PREFIX: Final = "arrival "


@dataclass(frozen=True)
class Arrival:
    t: float
    """Wall-clock time (``time.time()``) at which the request head had been received."""
    message_id: str | None
    """The ebXML MessageId, when the envelope could be read."""
    nhs_number: str | None
    """The NHS number, when the HL7 query could be read."""
    accepted: bool
    """Answered 202; False when refused (400, SOAP fault, MessageError, connection reset)."""
    fault: str | None
    """The injected faults, comma-separated in decision order, or None."""

    def to_line(self) -> str:
        # Spelt out rather than dataclasses.asdict, which deep-copies every field: this runs once per query.
        fields = {
            "t": self.t,
            "message_id": self.message_id,
            "nhs_number": self.nhs_number,
            "accepted": self.accepted,
            "fault": self.fault,
        }
        return ARRIVAL_PREFIX + json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> Arrival | None:
        """The arrival a log line records, or None for any other line."""
        if not line.startswith(ARRIVAL_PREFIX):
            return None
        data: dict[str, Any] = json.loads(line.removeprefix(ARRIVAL_PREFIX))
        return cls(
            t=float(data["t"]),
            message_id=data["message_id"],
            nhs_number=data["nhs_number"],
            accepted=bool(data["accepted"]),
            fault=data["fault"],
        )


class ArrivalPrinter:
    """Writes arrivals to a stream, holding back any that come before the ready line has been written."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._held: list[Arrival] | None = []

    def __call__(self, arrival: Arrival) -> None:
        if self._held is not None:
            self._held.append(arrival)
            return
        self._write(arrival)

    def ready(self) -> None:
        """The ready line is out: write what was held, and everything from now on as it comes."""
        held, self._held = self._held or [], None
        for arrival in held:
            self._write(arrival)

    def _write(self, arrival: Arrival) -> None:
        # Flushed per line: a test may SIGKILL the client the moment it has read enough of them.
        self._stream.write(arrival.to_line() + "\n")
        self._stream.flush()
