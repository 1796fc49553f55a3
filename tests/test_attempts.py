"""The in-memory index of open children's attempts."""

from __future__ import annotations

from batch.attempts import AttemptIndex
from batch.ids import new_id
from batch.store import AttemptRef


def _ref(nhs: str) -> AttemptRef:
    return AttemptRef(new_id(), "RUN", nhs, new_id(), new_id())


def test_attempts_are_found_by_any_of_the_message_ids_a_reply_names() -> None:
    index = AttemptIndex()
    first, second, other = _ref("9991234012"), _ref("9991234012"), _ref("9991234020")
    for ref in (first, second, other):
        index.add(ref)
    assert len(index) == 3
    assert index.find([second.message_id.lower()]) == second
    assert index.find([new_id(), other.message_id]) == other  # the first held id wins
    assert index.find([first.message_id, other.message_id]) == first
    assert index.find([]) is None
    assert index.find([new_id()]) is None
    assert index.find([first.conversation_id, first.query_event_id]) is None  # only M is held


def test_a_finished_child_leaves_the_index() -> None:
    index = AttemptIndex()
    first, second, other = _ref("9991234012"), _ref("9991234012"), _ref("9991234020")
    for ref in (first, second, other):
        index.add(ref)
    index.drop_child("9991234012")
    assert index.find([first.message_id]) is None and index.find([second.message_id]) is None
    assert index.find([other.message_id]) == other and len(index) == 1
    index.drop_child("9991234012")  # twice is harmless
    assert len(index) == 1


def test_an_attempt_added_again_is_held_once_and_dropped_with_its_child() -> None:
    # A resumed run adds the attempts an earlier process may still get replies for; one may already be held.
    index = AttemptIndex()
    ref = _ref("9991234012")
    index.add(ref)
    index.add(ref)
    assert len(index) == 1 and index.find([ref.message_id]) == ref
    index.drop_child("9991234012")
    assert len(index) == 0 and index.find([ref.message_id]) is None
