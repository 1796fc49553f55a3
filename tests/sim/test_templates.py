"""Replies are built once per answer and then copied: a restamped copy must be exactly a fresh build."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from lxml import etree

from batch.ebxml import parse_message
from spine_sim import ebxml
from spine_sim.hl7 import HL7_NS, serialise
from spine_sim.ids import new_id
from spine_sim.replies import (
    SimAccess,
    SimLocalAuthority,
    SimPlan,
    SimRecord,
    app_acknowledgement,
    query_failed,
    query_response,
    restamp,
)

LA = SimLocalAuthority("SIMLA01", "Northshire County Council (simulated)", "+441632960101", "+441632960102")
RECORD = SimRecord(
    LA, (SimPlan("CPP", date(2024, 1, 15), None),), "child", "Ada", "Simwell", date(2019, 5, 4)
)
ACCESS = SimAccess(
    datetime(2026, 3, 1, 10, 15), "Northbridge General Hospital (simulated)", "Nurse", new_id()
)
COMMON = {"spine_asid": "999000000001", "client_asid": "999000000101"}
BUILDERS: dict[str, Callable[..., etree._Element]] = {
    "repc": lambda **ids: query_response(
        nhs_number="9991234014", records=[RECORD], access=[ACCESS], **COMMON, **ids
    ),
    "quqi": lambda **ids: query_failed(
        issue_code="NHSNCC002", issue_display="No Record Found", **COMMON, **ids
    ),
    "mcci": lambda **ids: app_acknowledgement(
        ack_type="AE", detail_code="SIMAE01", detail_display="Simulated", **COMMON, **ids
    ),
}
PAYLOAD_ID = (
    f"{{{HL7_NS}}}ControlActEvent/{{{HL7_NS}}}subject/{{{HL7_NS}}}CP-ISNHSQueryResponse/{{{HL7_NS}}}id"
)


def _without_payload_id(root: etree._Element) -> bytes:
    # The query response's own id is random in every build, so it is compared apart.
    found = root.find(PAYLOAD_ID)
    if found is not None:
        found.set("root", "X")
    return serialise(root)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_restamped_copy_is_a_fresh_build(kind: str) -> None:
    build = BUILDERS[kind]
    template = build(reply_id=new_id(), message_ref=new_id(), now=datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    second: dict[str, Any] = {"reply_id": new_id(), "message_ref": new_id(), "now": datetime.now(UTC)}
    stamped = restamp(copy.deepcopy(template), **second)
    fresh = build(**second)
    assert _without_payload_id(stamped) == _without_payload_id(fresh)
    if kind == "repc":
        assert stamped.find(PAYLOAD_ID).get("root") != template.find(PAYLOAD_ID).get("root")


def test_restamp_refuses_a_foreign_document() -> None:
    with pytest.raises(ValueError, match="not a reply"):
        restamp(etree.Element("x"), reply_id=new_id(), message_ref=new_id(), now=datetime.now(UTC))


@pytest.mark.parametrize("ref", [new_id(), None], ids=["reply", "unsolicited"])
def test_the_envelope_template_fills_every_field(ref: str | None) -> None:
    header = ebxml.MessageHeader(
        "SIMSPINE-0000001", "SIMCLINIC-0000101", "S1SIMCPIS0001", new_id(), ebxml.SERVICE,
        "REPC_IN000007GB01", new_id(), "2026-01-05T09:00:00Z", ref,
    )  # fmt: skip
    headers, body = ebxml.build_message(header, b"<x/>")
    message = parse_message(headers["Content-Type"], body)
    assert tuple(vars(message.header).values()) == tuple(vars(header).values())
    assert message.hl7 == b"<x/>"
    assert body.count(b"----=_MIME-Boundary") == 3
