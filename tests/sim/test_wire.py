"""The simulator's own wire code against the client's: each side's builder read by the other side's reader.

Queries come from cpis-batch's builders and are read by the simulator; what the simulator writes (replies,
SOAP faults, MessageErrors) is read and classified by cpis-batch.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from lxml import etree

from batch.ebxml import (
    Accepted,
    MessageHeader,
    Rejected,
    build_acknowledgement,
    build_message,
    classify_sync_answer,
    parse_message,
    utc_timestamp,
)
from batch.hl7 import Sender, build_query
from batch.ids import new_id
from spine_sim import ebxml as sim_ebxml
from spine_sim.query import ParsedQuery, QueryReadError, parse_query
from spine_sim.signals import build_soap_fault, build_sync_message_error
from spine_sim.xmlsafe import XmlError, parse_xml

NS = {
    "SOAP": "http://schemas.xmlsoap.org/soap/envelope/",
    "eb": "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd",
    "nasp": "http://national.carerecords.nhs.uk/schema/",
    "h": "urn:hl7-org:v3",
}
EB = NS["eb"]
NHS_NUMBER = "9990000018"
OUR_ASID, SPINE_ASID = "999000000101", "999000000001"
CLIENT_PARTY, SPINE_PARTY, CPA_ID = "SIMCLINIC-0000101", "SIMSPINE-0000001", "S1SIMCPIS0001"
NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
SENDER = Sender(
    asid=OUR_ASID,
    ods_code="SIM01",
    organisation_name="Simulated Test Trust",
    responsible_person_name="Dr Jane Q Smith",
    role_code="R0260",
    role_name="General Medical Practitioner",
)
PARAMETERS = "//h:cP-ISNHSQuery/h:queryByParameter"


def make_query(message_id: str | None = None, query_id: str | None = None) -> bytes:
    return build_query(
        nhs_number=NHS_NUMBER,
        message_id=message_id or new_id(),
        query_id=query_id or new_id(),
        sender=SENDER,
        spine_asid=SPINE_ASID,
        now=NOW,
    )


def query_header(message_id: str) -> MessageHeader:
    return MessageHeader(
        from_party=CLIENT_PARTY,
        to_party=SPINE_PARTY,
        cpa_id=CPA_ID,
        conversation_id=new_id(),
        service="urn:nhs:names:services:cpisquery",
        action="QUPC_IN000006GB01",
        message_id=message_id,
        timestamp=utc_timestamp(NOW),
    )


# --- the HL7 query, built by cpis-batch, read by the simulator ---------------------------------------------


def _edited(change: Callable[[etree._Element], None]) -> bytes:
    root = parse_xml(make_query())
    change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _flag(root: etree._Element) -> etree._Element:
    (flag,) = root.xpath(f"{PARAMETERS}/h:accessEventType", namespaces=NS)
    return flag


def _remove_flag(root: etree._Element) -> None:
    flag = _flag(root)
    flag.getparent().remove(flag)


def _duplicate_flag(root: etree._Element) -> None:
    flag = _flag(root)
    flag.getparent().append(etree.fromstring(etree.tostring(flag)))


def _duplicate_value(root: etree._Element) -> None:
    flag = _flag(root)
    flag.append(etree.fromstring(etree.tostring(flag[0])))


def _set_true(root: etree._Element) -> None:
    _flag(root)[0].set("value", "true")


def _drop_value_attribute(root: etree._Element) -> None:
    del _flag(root)[0].attrib["value"]


def _stray_copy_elsewhere(root: etree._Element) -> None:
    (control_act,) = root.xpath("h:ControlActEvent", namespaces=NS)
    extra = etree.SubElement(control_act, "{urn:hl7-org:v3}queryByParameter")
    extra.append(etree.fromstring(etree.tostring(_flag(root))))


def test_parse_query_reads_what_the_client_builds() -> None:
    message_id, query_id = new_id(), new_id()
    parsed = parse_query(make_query(message_id, query_id))
    assert parsed == ParsedQuery(message_id, query_id, NHS_NUMBER, OUR_ASID, ("false",))


@pytest.mark.parametrize(
    ("change", "flags"),
    [
        (_remove_flag, ()),
        (_duplicate_flag, ("false", "false")),
        (_duplicate_value, ("false", "false")),
        (_set_true, ("true",)),
        (_drop_value_attribute, ()),
        (_stray_copy_elsewhere, ("false", "false")),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_parse_query_reports_every_flag(
    change: Callable[[etree._Element], None], flags: tuple[str, ...]
) -> None:
    assert parse_query(_edited(change)).scheduled_care_flags == flags


def test_parse_query_reads_documents_without_namespace() -> None:
    text = make_query().decode("utf-8").replace(' xmlns="urn:hl7-org:v3"', "")
    parsed = parse_query(text.encode("utf-8"))
    assert (parsed.nhs_number, parsed.sender_asid, parsed.scheduled_care_flags) == (
        NHS_NUMBER,
        OUR_ASID,
        ("false",),
    )


def test_parse_query_tolerates_missing_parts() -> None:
    assert parse_query(b"<QUPC_IN000006GB01/>") == ParsedQuery(None, None, None, None, ())


@pytest.mark.parametrize("data", [b"", b"<unclosed", b'<!DOCTYPE x [<!ENTITY e "y">]><x>&e;</x>'])
def test_parse_query_refuses_non_xml_and_doctype(data: bytes) -> None:
    with pytest.raises(QueryReadError):
        parse_query(data)


def test_the_parser_resolves_no_entities_and_fetches_nothing() -> None:
    with pytest.raises(XmlError, match="DOCTYPE"):
        parse_xml(b'<!DOCTYPE x SYSTEM "http://example.invalid/x.dtd"><x/>')
    # An undeclared entity reference is an error, never a lookup.
    with pytest.raises(XmlError):
        parse_xml(b"<x>&ext;</x>")


# --- the ebXML message, framed by cpis-batch, read by the simulator ----------------------------------------


def test_read_message_reads_what_the_client_sends() -> None:
    message_id = new_id()
    hl7 = make_query(message_id)
    header = query_header(message_id)
    http_headers, body = build_message(header, hl7)
    message = sim_ebxml.read_message(http_headers["Content-Type"], body)
    assert message.hl7 == hl7
    assert message.header == sim_ebxml.MessageHeader(
        header.from_party,
        header.to_party,
        header.cpa_id,
        header.conversation_id,
        header.service,
        header.action,
        header.message_id,
        header.timestamp,
    )


def _related(*parts: tuple[str, bytes, str], nl: bytes = b"\r\n") -> bytes:
    chunks = []
    for content_id, content, encoding in parts:
        chunks.append(
            b"----=_MIME-Boundary" + nl + f"Content-Id: <{content_id}>".encode() + nl
            + b"Content-Type: text/xml" + nl + f"Content-Transfer-Encoding: {encoding}".encode() + nl + nl
            + content + nl
        )  # fmt: skip
    return b"".join(chunks) + b"----=_MIME-Boundary--" + nl


def _soap(message_id: str) -> bytes:
    _, body = build_message(query_header(message_id), b"<x/>")
    return body.split(b"\r\n\r\n", 1)[1].split(b"\r\n----=_MIME-Boundary", 1)[0]


@pytest.mark.parametrize(
    ("content_type", "nl", "encoding"),
    [
        ('multipart/related; type="text/xml"; start="<ebXMLHeader@spine.nhs.uk>"; boundary="--=_MIME-Boundary"', b"\r\n", "8bit"),
        ("multipart/related; boundary=--=_MIME-Boundary; start=ebXMLHeader@spine.nhs.uk", b"\n", "8bit"),
        ('Multipart/Related; boundary="--=_MIME-Boundary"', b"\r\n", "base64"),
    ],
    ids=["parameter-order", "lf-and-bare-start", "base64-no-start"],
)  # fmt: skip
def test_read_message_tolerates_other_framing(content_type: str, nl: bytes, encoding: str) -> None:
    message_id = new_id()
    hl7 = make_query(message_id)
    soap = _soap(message_id)
    if encoding == "base64":
        soap, hl7_wire = base64.encodebytes(soap), base64.encodebytes(hl7)
    else:
        hl7_wire = hl7
    body = _related(
        ("ebXMLHeader@spine.nhs.uk", soap, encoding),
        (f"{message_id}@spine.nhs.uk", hl7_wire, encoding),
        nl=nl,
    )
    message = sim_ebxml.read_message(content_type, body)
    assert message.header.message_id == message_id
    assert message.hl7 == hl7


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"hello"),
        ('multipart/related; boundary="--=_MIME-Boundary"', b"no delimiter at all"),
        ('multipart/related; boundary="--=_MIME-Boundary"', _related(("ebXMLHeader@spine.nhs.uk", b"<x/>", "8bit"))[:-26]),
        ('multipart/mixed; boundary="--=_MIME-Boundary"', _related(("a@b", b"<x/>", "8bit"))),
        ("text/xml", b'<!DOCTYPE e [<!ENTITY x "boom">]><e>&x;</e>'),
        ("text/xml", b"<notsoap/>"),
    ],
    ids=["not-multipart", "no-parts", "unclosed", "not-related", "doctype", "not-an-envelope"],
)  # fmt: skip
def test_read_message_refuses_unreadable_messages(content_type: str, body: bytes) -> None:
    with pytest.raises(sim_ebxml.EbxmlReadError):
        sim_ebxml.read_message(content_type, body)


def test_a_manifest_naming_a_missing_part_is_refused() -> None:
    message_id = new_id()
    body = _related(
        ("ebXMLHeader@spine.nhs.uk", _soap(message_id), "8bit"), ("other@spine.nhs.uk", b"<x/>", "8bit")
    )
    with pytest.raises(sim_ebxml.EbxmlReadError, match="Manifest"):
        sim_ebxml.read_message('multipart/related; boundary="--=_MIME-Boundary"', body)


# --- replies and signals, written by the simulator, read by cpis-batch ---------------------------------------


def _reply_header(**changes: str) -> sim_ebxml.MessageHeader:
    values = {
        "from_party": SPINE_PARTY,
        "to_party": CLIENT_PARTY,
        "cpa_id": CPA_ID,
        "conversation_id": new_id(),
        "service": "urn:nhs:names:services:cpisquery",
        "action": "QUQI_IN010000UK14",
        "message_id": new_id(),
        "timestamp": utc_timestamp(NOW),
        "ref_to_message_id": new_id(),
    }
    return sim_ebxml.MessageHeader(**{**values, **changes})


def test_the_client_reads_the_simulators_reply_envelope() -> None:
    header = _reply_header()
    hl7 = b'<?xml version="1.0" encoding="UTF-8"?>\n<QUQI_IN010000UK14 xmlns="urn:hl7-org:v3"/>'
    http_headers, body = sim_ebxml.build_message(header, hl7)
    message = parse_message(http_headers["Content-Type"], body, http_headers["SOAPAction"])
    assert message.hl7 == hl7
    assert message.soap_action == "urn:nhs:names:services:cpisquery/QUQI_IN010000UK14"
    assert message.header == MessageHeader(**vars(header))
    soap = parse_xml(body.split(b"\r\n\r\n", 1)[1].split(b"\r\n----=_MIME-Boundary", 1)[0])
    # Express route: neither SyncReply nor AckRequested on the reply leg (docs/protocol.md#p2).
    assert soap.find("SOAP:Header/eb:SyncReply", NS) is None
    assert soap.find("SOAP:Header/eb:AckRequested", NS) is None


def test_values_from_the_query_are_escaped_in_replies() -> None:
    header = _reply_header(conversation_id="</eb:ConversationId><evil/>")
    http_headers, body = sim_ebxml.build_message(header, b"<x/>")
    message = parse_message(http_headers["Content-Type"], body)
    assert message.header.conversation_id == "</eb:ConversationId><evil/>"
    with pytest.raises(ValueError, match="boundary"):
        sim_ebxml.build_message(_reply_header(conversation_id="----=_MIME-Boundary"), b"<x/>")


def test_acknowledgement_check() -> None:
    inbound = MessageHeader(SPINE_PARTY, CLIENT_PARTY, CPA_ID, new_id(), "s:x", "X", new_id(), "t")
    ack = build_acknowledgement(inbound, our_party_key=CLIENT_PARTY, ack_message_id=new_id(), now=NOW)
    assert sim_ebxml.acknowledges(ack, inbound.message_id)
    assert sim_ebxml.acknowledges(ack, inbound.message_id.lower())
    assert not sim_ebxml.acknowledges(ack, new_id())
    assert not sim_ebxml.acknowledges(b"<not-xml", inbound.message_id)


def test_sync_message_error_layout() -> None:
    ref, message_id = new_id(), new_id()
    body = build_sync_message_error(
        ref,
        from_party=SPINE_PARTY,
        to_party=CLIENT_PARTY,
        cpa_id=CPA_ID,
        conversation_id=new_id(),
        error_code="ValueNotRecognized",
        description="501319:Unknown eb:CPAId",
        message_id=message_id,
        now=NOW,
    )
    root = parse_xml(body)
    assert root.findtext(".//eb:MessageHeader/eb:MessageData/eb:RefToMessageId", namespaces=NS) == ref
    assert root.findtext(".//eb:MessageHeader/eb:MessageData/eb:MessageId", namespaces=NS) == message_id
    assert root.findtext(".//eb:MessageHeader/eb:From/eb:PartyId", namespaces=NS) == SPINE_PARTY
    assert (
        root.findtext(".//eb:MessageHeader/eb:Service", namespaces=NS)
        == "urn:oasis:names:tc:ebxml-msg:service"
    )
    assert root.findtext(".//eb:MessageHeader/eb:Action", namespaces=NS) == "MessageError"
    error_list = root.find(".//eb:ErrorList", NS)
    assert error_list.get(f"{{{EB}}}highestSeverity") == "Error"
    (error,) = error_list.findall("eb:Error", NS)
    assert error.get(f"{{{EB}}}errorCode") == "ValueNotRecognized"
    assert error.get(f"{{{EB}}}severity") == "Error"
    assert error.findtext("eb:Description", namespaces=NS) == "501319:Unknown eb:CPAId"
    assert classify_sync_answer(500, "text/xml", body) == Rejected(
        "MessageError:ValueNotRecognized", "501319:Unknown eb:CPAId", retriable=False
    )


def test_soap_fault_layout() -> None:
    body = build_soap_fault(["200", "206"], "System failure to process message")
    fault = parse_xml(body).find("SOAP:Body/SOAP:Fault", NS)
    assert fault.findtext("faultcode") == "SOAP:Server"
    errors = fault.findall("detail/nasp:errorList/nasp:error", NS)
    assert [e.findtext("nasp:errorCode", namespaces=NS) for e in errors] == ["200", "206"]
    for error in errors:
        assert [etree.QName(child).localname for child in error] == [
            "codeContext",
            "errorCode",
            "severity",
            "location",
            "description",
        ]
        assert error.findtext("nasp:description", namespaces=NS) == "System failure to process message"
    assert classify_sync_answer(500, "text/xml", body) == Rejected(
        "SOAPFault:200,206", "System failure to process message; System failure to process message", True
    )
    with pytest.raises(ValueError):
        build_soap_fault([], "x")
    with pytest.raises(ValueError):
        build_soap_fault("200", "a string is not a list of codes")


def test_an_empty_202_is_acceptance() -> None:
    assert classify_sync_answer(202, None, b"") == Accepted()
