"""The attempts a reply can name, in memory, so that correlating a reply needs no read from the state file.

The pipeline adds an attempt just before its POST (after it is durable) and drops a child's attempts once the
child has an outcome; a resumed run adds the attempts an earlier process may still get replies for. A reply is
matched here by the message id it refers to (M: RefToMessageId or the HL7 messageRef), which every reply from
Spine carries; anything else (a late reply to a finished child, a reply to an earlier run, a reply matched only
by its conversation or query id) is looked up in the state file, which stays the source of truth and ranks the
keys. The index holds only children still waiting, so it is bounded by `max_in_flight` and the re-queries due,
not by the size of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

from batch.store import AttemptRef


class AttemptIndex:
    """Attempts of children still waiting, by message id (uppercase, as written)."""

    def __init__(self) -> None:
        self._by_message: dict[str, AttemptRef] = {}
        self._by_child: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._by_message)

    def add(self, ref: AttemptRef) -> None:
        self._by_message[ref.message_id] = ref
        self._by_child.setdefault(ref.nhs_number, []).append(ref.message_id)

    def drop_child(self, nhs_number: str) -> None:
        for message_id in self._by_child.pop(nhs_number, ()):
            self._by_message.pop(message_id, None)

    def find(self, message_ids: Sequence[str]) -> AttemptRef | None:
        """The attempt the first held message id names; None: ask the state file."""
        for message_id in message_ids:
            if (ref := self._by_message.get(message_id.upper())) is not None:
                return ref
        return None
