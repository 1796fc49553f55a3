"""The acknowledgement template renders byte for byte what the one-off builder builds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from batch.ebxml import AckTemplate, MessageHeader, build_acknowledgement

NOW = datetime(2026, 12, 4, 1, 2, 3, tzinfo=UTC)
ACK_ID = "0F0E0D0C-0B0A-4909-8807-060504030201"
INBOUND = MessageHeader(
    from_party="YES-0000806",
    to_party="RHM-801710",
    cpa_id="S3024519A3110234",
    conversation_id="3B2C6F0E-8E7A-4C0E-9E55-1D0B7C1D2E3F",
    service="urn:nhs:names:services:cpisquery",
    action="QUPC_IN000007GB01",
    message_id="6A1E0D52-3C7B-4F4B-9D8A-2B7A1F0C9E11",
    timestamp="2026-12-04T01:02:02Z",
)


def _template() -> AckTemplate:
    return AckTemplate(our_party_key="RHM-801710", to_party="YES-0000806", cpa_id="S3024519A3110234")


def test_each_render_equals_a_fresh_build() -> None:
    template = _template()
    second = replace(INBOUND, conversation_id="C0FFEE00-0000-4000-8000-000000000001", message_id="AB-1")
    later = datetime(2026, 12, 4, 1, 2, 9, tzinfo=UTC)
    for inbound, now in ((INBOUND, NOW), (second, later), (INBOUND, later)):
        expected = build_acknowledgement(inbound, our_party_key="RHM-801710", ack_message_id=ACK_ID, now=now)
        assert template.render(inbound, ack_message_id=ACK_ID, now=now) == expected
    assert b"<eb:RefToMessageId>AB-1</eb:RefToMessageId>" in template.render(
        second, ack_message_id=ACK_ID, now=NOW
    )


@pytest.mark.parametrize(
    ("inbound", "ack_id", "now", "message"),
    [
        (replace(INBOUND, cpa_id="OTHER"), ACK_ID, NOW, "not from this template's party and CPA"),
        (replace(INBOUND, from_party="X-1"), ACK_ID, NOW, "not from this template's party and CPA"),
        (replace(INBOUND, message_id=" "), ACK_ID, NOW, "inbound message_id must be a non-empty string"),
        (INBOUND, ACK_ID.lower(), NOW, "message_id must be an uppercase UUID"),
        (INBOUND, ACK_ID, datetime(2026, 12, 4), "timezone-aware"),
    ],
)
def test_what_it_refuses(inbound: MessageHeader, ack_id: str, now: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _template().render(inbound, ack_message_id=ack_id, now=now)
