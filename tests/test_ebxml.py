"""ebXML envelope: framing, tolerant parsing, header checks, signals and Spine's synchronous answers."""

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pytest
from lxml import etree

from batch import ebxml
from batch.ebxml import (
    Accepted,
    EbxmlParseError,
    MessageHeader,
    Rejected,
    build_acknowledgement,
    build_message,
    build_message_error,
    check_inbound_header,
    classify_sync_answer,
    parse_message,
    utc_timestamp,
)
from batch.xmlsafe import parse_xml

# Spine's refusals come from the simulator's builders: the client's classifier is checked against an
# independent writer, not against its own idea of the format.
from spine_sim.signals import build_soap_fault, build_sync_message_error

NS = {
    "SOAP": "http://schemas.xmlsoap.org/soap/envelope/",
    "eb": "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd",
    "xlink": "http://www.w3.org/1999/xlink",
    "hl7ebxml": "urn:hl7-org:transport/ebXML/DSTUv1.0",
    "nasp": "http://national.carerecords.nhs.uk/schema/",
}
EB = NS["eb"]
SOAP = NS["SOAP"]

OUR_PARTY = "X26-823847"
SPINE_PARTY = "YES-0000806"
CPA_ID = "S2001919A2011852"
M = "6C7F3F5B-0E0A-4D9B-9C7A-2B8F1D3E4A51"
C = "0B1E2D3C-4A5B-4C6D-8E7F-9A0B1C2D3E4F"
R = "A1B2C3D4-E5F6-4A7B-8C9D-0E1F2A3B4C5D"
A = "F0E1D2C3-B4A5-4968-8776-655443322110"
NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
HL7 = (
    b'<?xml version="1.0" encoding="UTF-8"?><QUPC_IN000006GB01 xmlns="urn:hl7-org:v3"><id root="'
    + M.encode()
    + b'"/></QUPC_IN000006GB01>'
)
REPLY_HL7 = b'<REPC_IN000007GB01 xmlns="urn:hl7-org:v3"><id root="' + R.encode() + b'"/></REPC_IN000007GB01>'

SPEC_CONTENT_TYPE = (
    'multipart/related; boundary="--=_MIME-Boundary"; type="text/xml"; start="<ebXMLHeader@spine.nhs.uk>"'
)


def _query_header(**changes: str | None) -> MessageHeader:
    values: dict[str, str | None] = {
        "from_party": OUR_PARTY,
        "to_party": SPINE_PARTY,
        "cpa_id": CPA_ID,
        "conversation_id": C,
        "service": "urn:nhs:names:services:cpisquery",
        "action": "QUPC_IN000006GB01",
        "message_id": M,
        "timestamp": "2025-03-14T09:26:53Z",
        "ref_to_message_id": None,
    }
    values.update(changes)
    return MessageHeader(**values)  # type: ignore[arg-type]


def _reply_header(**changes: str | None) -> MessageHeader:
    base = {
        "from_party": SPINE_PARTY,
        "to_party": OUR_PARTY,
        "action": "REPC_IN000007GB01",
        "message_id": R,
        "ref_to_message_id": M,
    }
    base.update(changes)
    return _query_header(**base)


def _parts(body: bytes) -> list[bytes]:
    """Raw parts between delimiters (CRLF framing assumed, as build_message promises)."""
    assert body.startswith(b"----=_MIME-Boundary\r\n")
    assert body.endswith(b"\r\n----=_MIME-Boundary--\r\n")
    inner = body[len(b"----=_MIME-Boundary\r\n") : -len(b"\r\n----=_MIME-Boundary--\r\n")]
    return inner.split(b"\r\n----=_MIME-Boundary\r\n")


def _soap_of(body: bytes) -> etree._Element:
    _, _, content = _parts(body)[0].partition(b"\r\n\r\n")
    return parse_xml(content)


# --- outbound ---------------------------------------------------------------------------------------------


def test_http_headers_are_exactly_as_specified() -> None:
    headers, _ = build_message(_query_header(), HL7)
    assert headers == {
        "Content-Type": SPEC_CONTENT_TYPE,
        "SOAPAction": "urn:nhs:names:services:cpisquery/QUPC_IN000006GB01",
    }


def test_body_uses_crlf_framing_and_the_specified_part_headers() -> None:
    _, body = build_message(_query_header(), HL7)
    assert b"\n" not in body.replace(b"\r\n", b""), "every line end is CRLF"
    parts = _parts(body)
    assert len(parts) == 2
    soap_head, blank, _ = parts[0].partition(b"\r\n\r\n")
    assert blank
    assert soap_head.split(b"\r\n") == [
        b"Content-Id: <ebXMLHeader@spine.nhs.uk>",
        b"Content-Type: text/xml; charset=UTF-8",
        b"Content-Transfer-Encoding: 8bit",
    ]
    hl7_head, _, hl7_content = parts[1].partition(b"\r\n\r\n")
    assert hl7_head.split(b"\r\n") == [
        f"Content-Id: <{M}@spine.nhs.uk>".encode(),
        b"Content-Type: text/xml; charset=UTF-8",
        b"Content-Transfer-Encoding: 8bit",
    ]
    assert hl7_content == HL7


def test_manifest_cid_names_the_hl7_part() -> None:
    _, body = build_message(_query_header(), HL7)
    soap = _soap_of(body)
    hrefs = soap.xpath("SOAP:Body/eb:Manifest/eb:Reference/@xlink:href", namespaces=NS)
    assert hrefs == [f"cid:{M}@spine.nhs.uk"]
    hl7_head = _parts(body)[1].partition(b"\r\n\r\n")[0]
    content_id = hl7_head.split(b"\r\n")[0].removeprefix(b"Content-Id: <").removesuffix(b">").decode()
    assert hrefs[0] == "cid:" + content_id
    reference = soap.find("SOAP:Body/eb:Manifest/eb:Reference", NS)
    assert reference.find("hl7ebxml:Payload", NS).attrib == {
        "style": "HL7",
        "encoding": "XML",
        "version": "3.0",
    }
    assert reference.find("eb:Schema", NS).get(f"{{{EB}}}location") == (
        "http://www.nhsia.nhs.uk/schemas/HL7-Message.xsd"
    )


def test_soap_header_carries_the_message_header_fields() -> None:
    _, body = build_message(_query_header(), HL7)
    soap = _soap_of(body)
    header = soap.find("SOAP:Header/eb:MessageHeader", NS)
    assert header.get(f"{{{SOAP}}}mustUnderstand") == "1"
    assert header.get(f"{{{EB}}}version") == "2.0"

    def text(path: str) -> str:
        return header.find(path, NS).text

    assert text("eb:From/eb:PartyId") == OUR_PARTY
    assert text("eb:To/eb:PartyId") == SPINE_PARTY
    assert (
        header.find("eb:From/eb:PartyId", NS).get(f"{{{EB}}}type")
        == "urn:nhs:names:partyType:ocs+serviceInstance"
    )
    assert text("eb:CPAId") == CPA_ID
    assert text("eb:ConversationId") == C
    assert text("eb:Service") == "urn:nhs:names:services:cpisquery"
    assert text("eb:Action") == "QUPC_IN000006GB01"
    assert text("eb:MessageData/eb:MessageId") == M
    assert text("eb:MessageData/eb:Timestamp") == "2025-03-14T09:26:53Z"
    assert header.find("eb:MessageData/eb:RefToMessageId", NS) is None
    sync = soap.find("SOAP:Header/eb:SyncReply", NS)
    assert sync is not None
    assert sync.get(f"{{{SOAP}}}actor") == "http://schemas.xmlsoap.org/soap/actor/next"
    assert soap.find("SOAP:Header/eb:AckRequested", NS) is None
    assert soap.find("SOAP:Header/eb:DuplicateElimination", NS) is None


# --- whole messages, byte for byte: every value and attribute that reaches the wire ------------------------

_ENVELOPE_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?><SOAP:Envelope xmlns:SOAP="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:eb="http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"'
    ' xmlns:hl7ebxml="urn:hl7-org:transport/ebXML/DSTUv1.0" xmlns:xlink="http://www.w3.org/1999/xlink">'
)
_PARTY = '<eb:PartyId eb:type="urn:nhs:names:partyType:ocs+serviceInstance">{}</eb:PartyId>'


def _message_header_xml(
    *, from_party: str, to_party: str, service: str, action: str, message_id: str, ref: str | None
) -> str:
    return (
        '<eb:MessageHeader SOAP:mustUnderstand="1" eb:version="2.0">'
        f"<eb:From>{_PARTY.format(from_party)}</eb:From><eb:To>{_PARTY.format(to_party)}</eb:To>"
        f"<eb:CPAId>{CPA_ID}</eb:CPAId><eb:ConversationId>{C}</eb:ConversationId>"
        f"<eb:Service>{service}</eb:Service><eb:Action>{action}</eb:Action>"
        f"<eb:MessageData><eb:MessageId>{message_id}</eb:MessageId>"
        "<eb:Timestamp>2025-03-14T09:26:53Z</eb:Timestamp>"
        + (f"<eb:RefToMessageId>{ref}</eb:RefToMessageId>" if ref else "")
        + "</eb:MessageData></eb:MessageHeader>"
    )


@pytest.mark.parametrize("ref", [None, R])
def test_the_whole_message_byte_for_byte(ref: str | None) -> None:
    headers, body = build_message(_query_header(ref_to_message_id=ref), HL7)
    soap = (
        _ENVELOPE_OPEN
        + "<SOAP:Header>"
        + _message_header_xml(
            from_party=OUR_PARTY,
            to_party=SPINE_PARTY,
            service="urn:nhs:names:services:cpisquery",
            action="QUPC_IN000006GB01",
            message_id=M,
            ref=ref,
        )
        + '<eb:SyncReply SOAP:mustUnderstand="1" eb:version="2.0"'
        ' SOAP:actor="http://schemas.xmlsoap.org/soap/actor/next"/></SOAP:Header>'
        '<SOAP:Body><eb:Manifest SOAP:mustUnderstand="1" eb:version="2.0">'
        f'<eb:Reference xlink:href="cid:{M}@spine.nhs.uk">'
        '<eb:Schema eb:location="http://www.nhsia.nhs.uk/schemas/HL7-Message.xsd" eb:version="1.0"/>'
        '<eb:Description xml:lang="en">HL7 payload</eb:Description>'
        '<hl7ebxml:Payload style="HL7" encoding="XML" version="3.0"/>'
        "</eb:Reference></eb:Manifest></SOAP:Body></SOAP:Envelope>"
    )
    assert headers == {
        "Content-Type": SPEC_CONTENT_TYPE,
        "SOAPAction": "urn:nhs:names:services:cpisquery/QUPC_IN000006GB01",
    }
    assert body == (
        b"----=_MIME-Boundary\r\n"
        b"Content-Id: <ebXMLHeader@spine.nhs.uk>\r\n"
        b"Content-Type: text/xml; charset=UTF-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + soap.encode() + b"\r\n"
        b"----=_MIME-Boundary\r\n"
        b"Content-Id: <" + M.encode() + b"@spine.nhs.uk>\r\n"
        b"Content-Type: text/xml; charset=UTF-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + HL7 + b"\r\n"
        b"----=_MIME-Boundary--\r\n"
    )


def test_the_whole_acknowledgement_byte_for_byte() -> None:
    ack = build_acknowledgement(_reply_header(), our_party_key=OUR_PARTY, ack_message_id=A, now=NOW)
    assert (
        ack
        == (
            _ENVELOPE_OPEN
            + "<SOAP:Header>"
            + _message_header_xml(
                from_party=OUR_PARTY,
                to_party=SPINE_PARTY,
                service="urn:oasis:names:tc:ebxml-msg:service",
                action="Acknowledgment",
                message_id=A,
                ref=R,
            )
            + '<eb:Acknowledgment SOAP:mustUnderstand="1" eb:version="2.0"'
            ' SOAP:actor="urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH">'
            f"<eb:Timestamp>2025-03-14T09:26:53Z</eb:Timestamp><eb:RefToMessageId>{R}</eb:RefToMessageId>"
            f"<eb:From>{_PARTY.format(OUR_PARTY)}</eb:From></eb:Acknowledgment></SOAP:Header><SOAP:Body/>"
            "</SOAP:Envelope>"
        ).encode()
    )


@pytest.mark.parametrize("severity", ["Error", "Warning"])
def test_the_whole_message_error_byte_for_byte(severity: str) -> None:
    data = build_message_error(
        _reply_header(),
        our_party_key=OUR_PARTY,
        error_message_id=A,
        now=NOW,
        error_code="ValueNotRecognized",
        description="501314:Invalid To Party Type attribute",
        severity=severity,
    )
    assert (
        data
        == (
            _ENVELOPE_OPEN
            + "<SOAP:Header>"
            + _message_header_xml(
                from_party=OUR_PARTY,
                to_party=SPINE_PARTY,
                service="urn:oasis:names:tc:ebxml-msg:service",
                action="MessageError",
                message_id=A,
                ref=R,
            )
            + f'<eb:ErrorList SOAP:mustUnderstand="1" eb:version="2.0" eb:highestSeverity="{severity}">'
            '<eb:Error eb:codeContext="urn:oasis:names:tc:ebxml-msg:service:errors"'
            f' eb:errorCode="ValueNotRecognized" eb:severity="{severity}">'
            '<eb:Description xml:lang="en">501314:Invalid To Party Type attribute</eb:Description>'
            "</eb:Error></eb:ErrorList></SOAP:Header><SOAP:Body/></SOAP:Envelope>"
        ).encode()
    )


def test_the_message_error_default_severity_is_error() -> None:
    data = build_message_error(
        _reply_header(), our_party_key=OUR_PARTY, error_message_id=A, now=NOW, error_code="X", description="d"
    )
    assert b'eb:highestSeverity="Error"' in data and b'eb:severity="Error"' in data


def test_ref_to_message_id_is_written_when_set() -> None:
    _, body = build_message(_reply_header(), REPLY_HL7)
    soap = _soap_of(body)
    assert soap.findtext("SOAP:Header/eb:MessageHeader/eb:MessageData/eb:RefToMessageId", namespaces=NS) == M


def test_round_trip() -> None:
    header = _reply_header()
    http_headers, body = build_message(header, REPLY_HL7)
    message = parse_message(http_headers["Content-Type"], body, http_headers["SOAPAction"])
    assert message.header == header
    assert message.hl7 == REPLY_HL7
    assert message.soap_action == "urn:nhs:names:services:cpisquery/REPC_IN000007GB01"


def test_payload_with_utf8_text_round_trips_unescaped() -> None:
    hl7 = '<x xmlns="urn:hl7-org:v3"><name>Zoë Ødegård</name></x>'.encode()
    http_headers, body = build_message(_query_header(), hl7)
    assert hl7 in body
    assert parse_message(http_headers["Content-Type"], body).hl7 == hl7


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"message_id": M.lower()}, "message_id must be an uppercase UUID"),
        ({"message_id": M + ">\r\nX-Injected: 1"}, "message_id must be an uppercase UUID"),
        ({"action": "QUPC_IN000006GB01\r\nX-Injected: 1"}, "action must be an interaction id"),
        ({"action": ""}, "action must be an interaction id"),
        (
            {"service": "urn:nhs:names:services:cpisquery evil"},
            "service must be a URN without spaces or separators",
        ),
        ({"service": "cpisquery"}, "service must be a URN without spaces or separators"),
        ({"timestamp": "2025-03-14 09:26:53"}, "timestamp must be UTC YYYY-MM-DDThh:mm:ssZ"),
        ({"timestamp": "2025-03-14T09:26:53+00:00"}, "timestamp must be UTC YYYY-MM-DDThh:mm:ssZ"),
        ({"cpa_id": ""}, "cpa_id must be a non-empty string"),
        ({"cpa_id": " \t"}, "cpa_id must be a non-empty string"),
        ({"cpa_id": "S2001919A2011852\n----=_MIME-Boundary--"}, "cpa_id must not contain control characters"),
        ({"from_party": "X26\x7f"}, "from_party must not contain control characters"),
        ({"to_party": "\x1fYES"}, "to_party must not contain control characters"),
        ({"to_party": ""}, "to_party must be a non-empty string"),
        ({"conversation_id": C + "\t"}, "conversation_id must not contain control characters"),
        ({"conversation_id": ""}, "conversation_id must be a non-empty string"),
        ({"ref_to_message_id": M + "\r\n"}, "ref_to_message_id must not contain control characters"),
        ({"ref_to_message_id": ""}, "ref_to_message_id must be a non-empty string"),
        ({"from_party": "X----=_MIME-Boundary"}, "a header value contains the MIME boundary"),
    ],
)
def test_unsafe_or_malformed_header_values_are_refused(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_message(_query_header(**changes), HL7)


def test_printable_header_values_with_spaces_and_tildes_are_kept() -> None:
    header = _reply_header(from_party="YES 0000806~", cpa_id="S2001919 A2011852")
    http_headers, body = build_message(header, REPLY_HL7)
    assert parse_message(http_headers["Content-Type"], body).header == header


def test_an_empty_payload_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^the HL7 payload is empty$"):
        build_message(_query_header(), b"")


def _template(*, refers: bool) -> ebxml.MessageTemplate:
    return ebxml.MessageTemplate(
        from_party=OUR_PARTY,
        to_party=SPINE_PARTY,
        cpa_id=CPA_ID,
        service="urn:nhs:names:services:cpisquery",
        action="QUPC_IN000006GB01",
        refers=refers,
    )


def test_a_template_takes_a_ref_exactly_when_it_was_made_with_one() -> None:
    values = {"conversation_id": C, "message_id": M, "timestamp": "2025-03-14T09:26:53Z", "hl7": HL7}
    with pytest.raises(
        ValueError, match=r"^ref_to_message_id must be given exactly when the template refers to a message$"
    ):
        _template(refers=False).render(**values, ref_to_message_id=R)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"^ref_to_message_id must be given exactly when the template refers to a message$"
    ):
        _template(refers=True).render(**values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^ref_to_message_id must not contain control characters$"):
        _template(refers=True).render(**values, ref_to_message_id=R + "\n")  # type: ignore[arg-type]


def test_a_template_renders_each_attempt_afresh() -> None:
    template = _template(refers=False)
    first = template.render(conversation_id=C, message_id=M, timestamp="2025-03-14T09:26:53Z", hl7=HL7)
    second = template.render(conversation_id=R, message_id=A, timestamp="2025-03-14T09:26:54Z", hl7=REPLY_HL7)
    assert first == build_message(_query_header(), HL7)
    assert second == build_message(
        _query_header(conversation_id=R, message_id=A, timestamp="2025-03-14T09:26:54Z"), REPLY_HL7
    )
    first[0]["Content-Type"] = "changed"
    assert template.render(conversation_id=C, message_id=M, timestamp="2025-03-14T09:26:53Z", hl7=HL7) == (
        build_message(_query_header(), HL7)
    )


def test_payload_containing_the_boundary_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^the HL7 payload contains the MIME boundary$"):
        build_message(_query_header(), HL7 + b"\r\n----=_MIME-Boundary--\r\n")


def test_utc_timestamp() -> None:
    summer = datetime(2025, 7, 1, 10, 0, 5, 999, tzinfo=timezone(timedelta(hours=1)))
    assert utc_timestamp(summer) == "2025-07-01T09:00:05Z"
    assert utc_timestamp(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)) == "2025-12-31T23:59:59Z"
    with pytest.raises(ValueError, match=r"^ebXML timestamps need a timezone-aware datetime$"):
        utc_timestamp(datetime(2025, 7, 1, 10, 0, 5))  # naive on purpose

    class NoOffset(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

    with pytest.raises(ValueError, match=r"^ebXML timestamps need a timezone-aware datetime$"):
        utc_timestamp(datetime(2025, 7, 1, 10, 0, 5, tzinfo=NoOffset()))


# --- tolerant inbound parsing (docs/protocol.md#p9) -------------------------------------------------------

INBOUND_SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:eb="http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"'
    ' xmlns:hl7ebxml="{hl7ns}" xmlns:xlink="http://www.w3.org/1999/xlink">'
    '<soap:Header><eb:MessageHeader soap:mustUnderstand="1" eb:version="2.0">'
    '<eb:From><eb:PartyId eb:type="urn:nhs:names:partyType:ocs+serviceInstance">YES-0000806'
    "</eb:PartyId></eb:From>"
    '<eb:To><eb:PartyId eb:type="urn:nhs:names:partyType:ocs+serviceInstance">X26-823847'
    "</eb:PartyId></eb:To>"
    "<eb:CPAId>S2001919A2011852</eb:CPAId><eb:ConversationId>{conv}</eb:ConversationId>"
    "<eb:Service>urn:nhs:names:services:cpisquery</eb:Service><eb:Action>REPC_IN000007GB01</eb:Action>"
    "<eb:MessageData>{message_id}<eb:Timestamp>2025-03-14T09:27:01Z</eb:Timestamp>"
    "<eb:RefToMessageId>{ref}</eb:RefToMessageId></eb:MessageData>"
    "</eb:MessageHeader></soap:Header>"
    "<soap:Body>{manifest}</soap:Body></soap:Envelope>"
)
MANIFEST = (
    '<eb:Manifest soap:mustUnderstand="1" eb:version="2.0"><eb:Reference xlink:href="cid:{cid}">'
    '<hl7ebxml:Payload style="HL7" encoding="XML" version="3.0"/></eb:Reference></eb:Manifest>'
)


def _inbound_soap(
    *,
    hl7ns: str = "urn:hl7-org:transport/ebXML/DSTUv1.0",
    manifest_cid: str | None = f"{R}@spine.nhs.uk",
    message_id: str | None = R,
) -> bytes:
    manifest = MANIFEST.format(cid=manifest_cid) if manifest_cid else ""
    mid = f"<eb:MessageId>{message_id}</eb:MessageId>" if message_id else ""
    return INBOUND_SOAP.format(hl7ns=hl7ns, conv=C, message_id=mid, ref=M, manifest=manifest).encode()


def _part(
    content_id: str, content: bytes, content_type: str = "text/xml; charset=UTF-8", nl: bytes = b"\r\n"
) -> bytes:
    return (
        b"----=_MIME-Boundary" + nl
        + f"Content-Id: <{content_id}>".encode() + nl
        + f"Content-Type: {content_type}".encode() + nl
        + b"Content-Transfer-Encoding: 8bit" + nl + nl
        + content + nl
    )  # fmt: skip


def _multipart(*parts: bytes, nl: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + b"----=_MIME-Boundary--" + nl


def _standard_inbound(**soap_args: str | None) -> bytes:
    return _multipart(
        _part("ebXMLHeader@spine.nhs.uk", _inbound_soap(**soap_args)),
        _part(f"{R}@spine.nhs.uk", REPLY_HL7),
    )


# Content-Type spellings are test_mime's concern; these cover the start parameter quoted, bare and absent.
@pytest.mark.parametrize(
    "content_type",
    [
        SPEC_CONTENT_TYPE,
        "multipart/related; start=<ebXMLHeader@spine.nhs.uk>; type=text/xml; boundary=--=_MIME-Boundary",
        'multipart/related; boundary="--=_MIME-Boundary"',
    ],
)
def test_content_type_variants_are_accepted(content_type: str) -> None:
    message = parse_message(
        content_type, _standard_inbound(), '"urn:nhs:names:services:cpisquery/REPC_IN000007GB01"'
    )
    assert message.header == _reply_header(timestamp="2025-03-14T09:27:01Z")
    assert message.hl7 == REPLY_HL7
    assert message.soap_action == "urn:nhs:names:services:cpisquery/REPC_IN000007GB01"


def test_application_xml_parts_without_charset() -> None:
    body = _multipart(
        _part("ebXMLHeader@spine.nhs.uk", _inbound_soap(), "application/xml"),
        _part(f"{R}@spine.nhs.uk", REPLY_HL7, "application/xml"),
    )
    assert parse_message(SPEC_CONTENT_TYPE, body).hl7 == REPLY_HL7


def test_lowercase_hl7ebxml_namespace_and_single_line_lowercase_soap() -> None:
    soap = _inbound_soap(hl7ns="urn:hl7-org:transport/ebxml/DSTUv1.0")
    assert b"\n" not in soap and b"<soap:Envelope" in soap
    body = _multipart(
        _part("ebXMLHeader@spine.nhs.uk", soap),
        _part("other@spine.nhs.uk", b"<other/>"),
        _part(f"{R}@spine.nhs.uk", REPLY_HL7),
    )
    # The Manifest, not the position, picks the HL7 part.
    assert parse_message(SPEC_CONTENT_TYPE, body).hl7 == REPLY_HL7


def test_a_manifest_without_an_hl7_payload_reference_still_names_the_part() -> None:
    soap = _inbound_soap().replace(
        b'<hl7ebxml:Payload style="HL7" encoding="XML" version="3.0"/>', b"<eb:Description>x</eb:Description>"
    )
    body = _multipart(
        _part("ebXMLHeader@spine.nhs.uk", soap),
        _part("other@spine.nhs.uk", b"<other/>"),
        _part(f"{R}@spine.nhs.uk", REPLY_HL7),
    )
    assert parse_message(SPEC_CONTENT_TYPE, body).hl7 == REPLY_HL7


def test_without_manifest_the_second_part_is_the_payload() -> None:
    body = _multipart(
        _part("ebXMLHeader@spine.nhs.uk", _inbound_soap(manifest_cid=None)),
        _part("whatever@example", REPLY_HL7),
    )
    assert parse_message(SPEC_CONTENT_TYPE, body).hl7 == REPLY_HL7


def test_a_bare_soap_signal_has_no_payload() -> None:
    ack = build_acknowledgement(_reply_header(), our_party_key=OUR_PARTY, ack_message_id=A, now=NOW)
    message = parse_message("text/xml; charset=UTF-8", ack)
    assert message.hl7 is None
    assert message.header.action == "Acknowledgment"
    assert message.header.ref_to_message_id == R


def test_start_parameter_selects_the_ebxml_part() -> None:
    body = _multipart(
        _part(f"{R}@spine.nhs.uk", REPLY_HL7),
        _part("ebXMLHeader@spine.nhs.uk", _inbound_soap()),
    )
    message = parse_message(SPEC_CONTENT_TYPE, body)
    assert message.header.message_id == R
    assert message.hl7 == REPLY_HL7


def test_missing_message_id_is_not_a_parse_error() -> None:
    message = parse_message(SPEC_CONTENT_TYPE, _standard_inbound(message_id=None))
    assert message.header.message_id == ""
    problem = check_inbound_header(message.header, OUR_PARTY)
    assert problem is not None and problem.error_code == "Inconsistent"


DOCTYPE_SOAP = (
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x "boom">]>'
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header/><soap:Body/></soap:Envelope>'
)


# What the endpoint logs for each: the whole reason (an XML error's own text follows "ebXML part: ").
UNPARSEABLE_REASONS = {
    "doctype": "ebXML part: ",
    "bad-xml": "ebXML part: ",
    "not-soap": "ebXML part is not a SOAP 1.1 envelope",
    "no-message-header": "SOAP header without eb:MessageHeader",
    "manifest-cid-missing": "the Manifest references a MIME part that is not in the message",
    "payload-not-xml-type": "HL7 part is not text/xml or application/xml",
    "not-utf8": "ebXML part is not UTF-8",
}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(
            SPEC_CONTENT_TYPE, _multipart(_part("ebXMLHeader@spine.nhs.uk", DOCTYPE_SOAP)), id="doctype"
        ),
        pytest.param(
            SPEC_CONTENT_TYPE, _multipart(_part("ebXMLHeader@spine.nhs.uk", b"<a><b></a>")), id="bad-xml"
        ),
        pytest.param(
            SPEC_CONTENT_TYPE, _multipart(_part("ebXMLHeader@spine.nhs.uk", b"<Envelope/>")), id="not-soap"
        ),
        pytest.param(
            SPEC_CONTENT_TYPE,
            _multipart(
                _part(
                    "ebXMLHeader@spine.nhs.uk",
                    b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/><s:Body/></s:Envelope>',
                )
            ),
            id="no-message-header",
        ),
        pytest.param(
            SPEC_CONTENT_TYPE,
            _multipart(_part("ebXMLHeader@spine.nhs.uk", _inbound_soap()), _part("elsewhere@x", REPLY_HL7)),
            id="manifest-cid-missing",
        ),
        pytest.param(
            SPEC_CONTENT_TYPE,
            _multipart(
                _part("ebXMLHeader@spine.nhs.uk", _inbound_soap()),
                _part(f"{R}@spine.nhs.uk", b"x", "text/plain"),
            ),
            id="payload-not-xml-type",
        ),
        pytest.param(
            SPEC_CONTENT_TYPE,
            _multipart(_part("ebXMLHeader@spine.nhs.uk", _inbound_soap(), "text/xml; charset=ISO-8859-1")),
            id="not-utf8",
        ),
    ],
)
def test_unparseable_messages_raise(content_type: str, body: bytes, request: pytest.FixtureRequest) -> None:
    reason = UNPARSEABLE_REASONS[request.node.callspec.id]
    with pytest.raises(
        EbxmlParseError, match="^" + re.escape(reason) + ("" if reason.endswith(" ") else "$")
    ):
        parse_message(content_type, body)


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(EbxmlParseError, ValueError)


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        pytest.param("text/plain", b"hello", "not multipart/related", id="not-multipart"),
        pytest.param("multipart/related; type=text/xml", b"", "without a boundary", id="no-boundary"),
        pytest.param(
            SPEC_CONTENT_TYPE,
            _multipart(_part("ebXMLHeader@spine.nhs.uk", b"<x/>").replace(b"8bit", b"base64")),
            "invalid base64",
            id="bad-base64",
        ),
        pytest.param(SPEC_CONTENT_TYPE, b"----=_MIME-Boundary--\r\n", "without parts", id="no-parts"),
        pytest.param(
            SPEC_CONTENT_TYPE,
            _part("ebXMLHeader@spine.nhs.uk", b"<x/>"),
            "closing delimiter",
            id="no-closing-delimiter",
        ),
    ],
)
def test_mime_errors_surface_as_parse_errors_with_their_reason(
    content_type: str, body: bytes, reason: str
) -> None:
    # The endpoints catch EbxmlParseError only and log its text, so a MIME failure must arrive as one.
    with pytest.raises(EbxmlParseError, match=reason):
        parse_message(content_type, body)


# --- header checks (docs/protocol.md#p10) -----------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(ebxml.REPLY_ACTIONS))
def test_valid_reply_headers_pass(action: str) -> None:
    assert check_inbound_header(_reply_header(action=action), OUR_PARTY) is None


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"to_party": "X26-000000"}, "ValueNotRecognized"),
        ({"to_party": ""}, "ValueNotRecognized"),
        ({"service": "urn:nhs:names:services:pds"}, "NotSupported"),
        ({"action": "QUPC_IN000006GB01"}, "NotSupported"),
        ({"action": "PRPA_IN000203UK03"}, "NotSupported"),
        ({"message_id": ""}, "Inconsistent"),
    ],
)
def test_header_problems(changes: dict[str, str], code: str) -> None:
    descriptions = {
        "ValueNotRecognized": "501314:Invalid To Party Type attribute",
        "NotSupported": "eb:Service/eb:Action not supported by this endpoint",
        "Inconsistent": "eb:MessageId is missing",
    }
    assert check_inbound_header(_reply_header(**changes), OUR_PARTY) == ebxml.HeaderProblem(
        code, descriptions[code]
    )


def test_header_problems_are_reported_in_table_order() -> None:
    everything_wrong = _reply_header(to_party="X", service="urn:x:y", message_id="")
    assert check_inbound_header(everything_wrong, OUR_PARTY) == ebxml.HeaderProblem(
        "ValueNotRecognized", "501314:Invalid To Party Type attribute"
    )
    assert check_inbound_header(_reply_header(service="urn:x:y", message_id=""), OUR_PARTY) == (
        ebxml.HeaderProblem("NotSupported", "eb:Service/eb:Action not supported by this endpoint")
    )


# --- our acknowledgement and MessageError (docs/protocol.md#p12) ------------------------------------------


def test_acknowledgement_layout() -> None:
    inbound = _reply_header()
    ack = parse_xml(build_acknowledgement(inbound, our_party_key=OUR_PARTY, ack_message_id=A, now=NOW))
    header = ack.find("SOAP:Header", NS)

    def value(path: str) -> str:
        found = header.xpath(path, namespaces=NS)
        assert len(found) == 1, path
        return found[0] if isinstance(found[0], str) else found[0].text

    assert value("eb:MessageHeader/eb:From/eb:PartyId") == OUR_PARTY
    assert value("eb:MessageHeader/eb:To/eb:PartyId") == SPINE_PARTY
    assert value("eb:MessageHeader/eb:CPAId") == CPA_ID
    assert value("eb:MessageHeader/eb:ConversationId") == C
    assert value("eb:MessageHeader/eb:Service") == "urn:oasis:names:tc:ebxml-msg:service"
    assert value("eb:MessageHeader/eb:Action") == "Acknowledgment"
    assert value("eb:MessageHeader/eb:MessageData/eb:MessageId") == A
    assert value("eb:MessageHeader/eb:MessageData/eb:Timestamp") == "2025-03-14T09:26:53Z"
    assert value("eb:MessageHeader/eb:MessageData/eb:RefToMessageId") == R
    assert value("eb:Acknowledgment/@SOAP:mustUnderstand") == "1"
    assert value("eb:Acknowledgment/@eb:version") == "2.0"
    assert value("eb:Acknowledgment/@SOAP:actor") == "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
    assert value("eb:Acknowledgment/eb:Timestamp") == "2025-03-14T09:26:53Z"
    assert value("eb:Acknowledgment/eb:RefToMessageId") == R
    assert value("eb:Acknowledgment/eb:From/eb:PartyId") == OUR_PARTY
    assert header.find("eb:ErrorList", NS) is None
    body = ack.find("SOAP:Body", NS)
    assert body is not None and len(body) == 0 and not (body.text or "").strip()


def test_acknowledgement_requires_an_uppercase_id_and_an_inbound_message_id() -> None:
    with pytest.raises(ValueError, match=r"^message_id must be an uppercase UUID$"):
        build_acknowledgement(_reply_header(), our_party_key=OUR_PARTY, ack_message_id=A.lower(), now=NOW)
    with pytest.raises(ValueError, match=r"^inbound message_id must be a non-empty string$"):
        build_acknowledgement(
            _reply_header(message_id=" "), our_party_key=OUR_PARTY, ack_message_id=A, now=NOW
        )
    with pytest.raises(ValueError, match=r"^our_party_key must be a non-empty string$"):
        build_acknowledgement(_reply_header(), our_party_key="", ack_message_id=A, now=NOW)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"severity": "error"}, "severity must be Error or Warning"),
        ({"severity": "Fatal"}, "severity must be Error or Warning"),
        ({"error_code": ""}, "error_code must be a non-empty string"),
        ({"description": " "}, "description must be a non-empty string"),
        ({"our_party_key": ""}, "our_party_key must be a non-empty string"),
        ({"error_message_id": A.lower()}, "message_id must be an uppercase UUID"),
    ],
)
def test_message_error_values_are_checked(changes: dict[str, str], message: str) -> None:
    values = {
        "our_party_key": OUR_PARTY,
        "error_message_id": A,
        "error_code": "NotSupported",
        "description": "d",
        "severity": "Error",
        **changes,
    }
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_message_error(_reply_header(), now=NOW, **values)  # type: ignore[arg-type]


def test_message_error_layout() -> None:
    data = build_message_error(
        _reply_header(to_party="X26-000000"),
        our_party_key=OUR_PARTY,
        error_message_id=A,
        now=NOW,
        error_code="ValueNotRecognized",
        description="501314:Invalid To Party Type attribute",
    )
    root = parse_xml(data)
    header = root.find("SOAP:Header", NS)
    assert header.findtext("eb:MessageHeader/eb:Action", namespaces=NS) == "MessageError"
    assert (
        header.findtext("eb:MessageHeader/eb:Service", namespaces=NS)
        == "urn:oasis:names:tc:ebxml-msg:service"
    )
    assert header.findtext("eb:MessageHeader/eb:From/eb:PartyId", namespaces=NS) == OUR_PARTY
    assert header.findtext("eb:MessageHeader/eb:To/eb:PartyId", namespaces=NS) == SPINE_PARTY
    assert header.findtext("eb:MessageHeader/eb:MessageData/eb:MessageId", namespaces=NS) == A
    assert header.findtext("eb:MessageHeader/eb:MessageData/eb:RefToMessageId", namespaces=NS) == R
    assert header.find("eb:Acknowledgment", NS) is None
    error_list = header.find("eb:ErrorList", NS)
    assert error_list.get(f"{{{EB}}}highestSeverity") == "Error"
    assert error_list.get(f"{{{SOAP}}}mustUnderstand") == "1"
    errors = error_list.findall("eb:Error", NS)
    assert len(errors) == 1
    assert errors[0].get(f"{{{EB}}}codeContext") == "urn:oasis:names:tc:ebxml-msg:service:errors"
    assert errors[0].get(f"{{{EB}}}errorCode") == "ValueNotRecognized"
    assert errors[0].get(f"{{{EB}}}severity") == "Error"
    assert errors[0].findtext("eb:Description", namespaces=NS) == "501314:Invalid To Party Type attribute"
    assert classify_sync_answer(200, "text/xml", data) == Rejected(
        "MessageError:ValueNotRecognized", "501314:Invalid To Party Type attribute", retriable=False
    )


def test_message_error_for_a_message_without_id_has_no_ref() -> None:
    data = build_message_error(
        _reply_header(message_id=""),
        our_party_key=OUR_PARTY,
        error_message_id=A,
        now=NOW,
        error_code="Inconsistent",
        description="eb:MessageId is missing",
    )
    assert parse_xml(data).find(".//eb:RefToMessageId", NS) is None


def test_values_with_markup_are_escaped_not_injected() -> None:
    data = build_message_error(
        _reply_header(conversation_id="</eb:ConversationId><evil/>"),
        our_party_key=OUR_PARTY,
        error_message_id=A,
        now=NOW,
        error_code="NotSupported",
        description="<b>&",
    )
    root = parse_xml(data)
    assert root.find(".//evil") is None
    assert root.findtext(".//eb:ConversationId", namespaces=NS) == "</eb:ConversationId><evil/>"
    assert root.findtext(".//eb:Description", namespaces=NS) == "<b>&"


# --- Spine's synchronous answer (docs/protocol.md#p8) -----------------------------------------------------


def _spine_message_error(
    code: str = "ValueNotRecognized", description: str = "501319:Unknown eb:CPAId"
) -> bytes:
    return build_sync_message_error(
        M,
        from_party=SPINE_PARTY,
        to_party=OUR_PARTY,
        cpa_id=CPA_ID,
        conversation_id=C,
        error_code=code,
        description=description,
        message_id=A,
        now=NOW,
    )


def _ack_from_spine() -> bytes:
    return build_acknowledgement(_query_header(), our_party_key=SPINE_PARTY, ack_message_id=A, now=NOW)


def _as_multipart(xml: bytes) -> tuple[str, bytes]:
    return SPEC_CONTENT_TYPE, _multipart(_part("ebXMLHeader@spine.nhs.uk", xml))


REJECT_CPA = Rejected("MessageError:ValueNotRecognized", "501319:Unknown eb:CPAId", retriable=False)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        pytest.param(202, None, b"", Accepted(), id="202-empty"),
        pytest.param(202, "text/plain", b"  \r\n", Accepted(), id="202-blank"),
        pytest.param(200, "text/xml", _ack_from_spine(), Accepted(), id="200-ack"),
        pytest.param(202, "text/xml; charset=UTF-8", _ack_from_spine(), Accepted(), id="202-ack"),
        pytest.param(200, *_as_multipart(_ack_from_spine()), Accepted(), id="200-ack-multipart"),
        pytest.param(200, "text/xml", _spine_message_error(), REJECT_CPA, id="200-message-error"),
        pytest.param(500, "text/xml", _spine_message_error(), REJECT_CPA, id="500-message-error"),
        pytest.param(
            200, *_as_multipart(_spine_message_error()), REJECT_CPA, id="200-message-error-multipart"
        ),
        pytest.param(
            500,
            "text/xml",
            build_soap_fault(["200"], "d"),
            Rejected("SOAPFault:200", "d", True),
            id="fault-200",
        ),
        pytest.param(
            500,
            "text/xml",
            build_soap_fault(["206"], "d"),
            Rejected("SOAPFault:206", "d", True),
            id="fault-206",
        ),
        pytest.param(
            500,
            "text/xml",
            build_soap_fault(["208"], "d"),
            Rejected("SOAPFault:208", "d", True),
            id="fault-208",
        ),
        pytest.param(
            500,
            "text/xml",
            build_soap_fault(["200", "208"], "d"),
            Rejected("SOAPFault:200,208", "d; d", True),
            id="fault-all",
        ),
        pytest.param(
            500,
            "text/xml",
            build_soap_fault(["101"], "d"),
            Rejected("SOAPFault:101", "d", False),
            id="fault-permanent",
        ),
        pytest.param(
            500,
            "text/xml",
            build_soap_fault(["200", "101"], "d"),
            Rejected("SOAPFault:200,101", "d; d", False),
            id="fault-mixed",
        ),
        pytest.param(
            500,
            *_as_multipart(build_soap_fault(["206"], "d")),
            Rejected("SOAPFault:206", "d", True),
            id="fault-multipart",
        ),
        pytest.param(
            400,
            "text/html",
            b"<html>bad</html>",
            Rejected("http_400", "HTTP 400 from Spine", False),
            id="400",
        ),
        pytest.param(403, None, b"", Rejected("http_403", "HTTP 403 from Spine", False), id="403"),
        pytest.param(
            404, "text/plain", b"nope", Rejected("http_404", "HTTP 404 from Spine", False), id="404"
        ),
        pytest.param(
            502, "text/html", b"<html/>", Rejected("http_502", "HTTP 502 from Spine", True), id="502"
        ),
        pytest.param(503, None, b"", Rejected("http_503", "HTTP 503 from Spine", True), id="503"),
        pytest.param(504, None, b"", Rejected("http_504", "HTTP 504 from Spine", True), id="504"),
        pytest.param(
            500, "text/plain", b"oops", Rejected("http_500", "HTTP 500 from Spine", True), id="500-plain"
        ),
        pytest.param(507, None, b"", Rejected("http_507", "HTTP 507 from Spine", True), id="other-5xx"),
    ],
)
def test_classify_sync_answer(status: int, content_type: str | None, body: bytes, expected: object) -> None:
    assert classify_sync_answer(status, content_type, body) == expected


def test_soap_fault_without_error_list_is_infrastructure() -> None:
    body = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        b"<faultcode>s:Server</faultcode><faultstring>down</faultstring></s:Fault></s:Body></s:Envelope>"
    )
    answer = classify_sync_answer(500, "text/xml", body)
    assert isinstance(answer, Rejected) and answer.retriable and answer.code == "http_500"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>OK</body></html>", id="html"),
        pytest.param(b"not xml at all", id="text"),
        pytest.param(
            b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/><s:Body/></s:Envelope>',
            id="empty-envelope",
        ),
        pytest.param(DOCTYPE_SOAP, id="doctype"),
    ],
)
def test_a_200_without_an_ebxml_signal_is_not_success(body: bytes) -> None:
    answer = classify_sync_answer(200, "text/xml", body)
    assert isinstance(answer, Rejected)
    assert not answer.retriable


def test_warning_only_error_list_does_not_reject() -> None:
    warning = build_message_error(
        _query_header(),
        our_party_key=SPINE_PARTY,
        error_message_id=A,
        now=NOW,
        error_code="Inconsistent",
        description="advisory",
        severity="Warning",
    )
    assert classify_sync_answer(200, "text/xml", warning) == Accepted()


def test_client_error_is_not_retried_even_with_retriable_fault_codes() -> None:
    answer = classify_sync_answer(400, "text/xml", build_soap_fault(["200"], "d"))
    assert answer == Rejected("SOAPFault:200", "d", retriable=False)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (199, Rejected("http_199", "unexpected HTTP 199 from Spine", False)),
        (201, Rejected("http_201", "unexpected HTTP 201 from Spine", False)),
        (399, Rejected("http_399", "unexpected HTTP 399 from Spine", False)),
        (400, Rejected("http_400", "HTTP 400 from Spine", False)),
        (499, Rejected("http_499", "HTTP 499 from Spine", False)),
        (500, Rejected("http_500", "HTTP 500 from Spine", True)),
        (599, Rejected("http_599", "HTTP 599 from Spine", True)),
        (600, Rejected("http_600", "unexpected HTTP 600 from Spine", False)),
    ],
)
def test_statuses_at_the_edges_of_their_ranges(status: int, expected: Rejected) -> None:
    assert classify_sync_answer(status, None, b"") == expected


@pytest.mark.parametrize("status", [399, 500, 599])
def test_retriable_fault_codes_are_retried_outside_client_errors(status: int) -> None:
    answer = classify_sync_answer(status, "text/xml", build_soap_fault(["200"], "d"))
    assert answer == Rejected("SOAPFault:200", "d", retriable=True)


@pytest.mark.parametrize("status", [400, 499])
def test_retriable_fault_codes_are_not_retried_on_client_errors(status: int) -> None:
    answer = classify_sync_answer(status, "text/xml", build_soap_fault(["200"], "d"))
    assert answer == Rejected("SOAPFault:200", "d", retriable=False)


def test_a_multipart_answer_is_read_from_the_part_start_names() -> None:
    body = _multipart(
        _part(f"{R}@spine.nhs.uk", REPLY_HL7), _part("ebXMLHeader@spine.nhs.uk", _ack_from_spine())
    )
    assert classify_sync_answer(200, SPEC_CONTENT_TYPE, body) == Accepted()


def test_redirect_is_not_retried() -> None:
    answer = classify_sync_answer(302, None, b"")
    assert isinstance(answer, Rejected) and not answer.retriable
