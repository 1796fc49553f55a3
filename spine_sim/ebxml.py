"""The ebXML envelope as Spine speaks it: reading queries, writing replies.

See docs/protocol.md#p3 to docs/protocol.md#p12. Written apart from the client's own ebXML code: each side
checks the other, so a misreading of the protocol shared by both cannot pass every test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import unquote

from lxml import etree

from spine_sim import mime
from spine_sim.xmlsafe import XmlError, parse_xml

SERVICE: Final = "urn:nhs:names:services:cpisquery"
ACTION_QUERY: Final = "QUPC_IN000006GB01"
MSH_SERVICE: Final = "urn:oasis:names:tc:ebxml-msg:service"
PARTY_TYPE: Final = "urn:nhs:names:partyType:ocs+serviceInstance"
BOUNDARY: Final = "--=_MIME-Boundary"
EBXML_CONTENT_ID: Final = "ebXMLHeader@spine.nhs.uk"
CONTENT_ID_DOMAIN: Final = "spine.nhs.uk"
CONTENT_TYPE: Final = (
    f'multipart/related; boundary="{BOUNDARY}"; type="text/xml"; start="<{EBXML_CONTENT_ID}>"'
)
# Content-Type of a SOAP fault or MessageError on the HTTP response.
SIGNAL_CONTENT_TYPE: Final = "text/xml; charset=UTF-8"

SOAP_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
EB_NS: Final = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
HL7EBXML_NS: Final = "urn:hl7-org:transport/ebXML/DSTUv1.0"
# NHS code writes both spellings (docs/protocol.md#p4); a reader accepts either.
HL7EBXML_NS_ALT: Final = "urn:hl7-org:transport/ebxml/DSTUv1.0"
XLINK_NS: Final = "http://www.w3.org/1999/xlink"
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"

_NSMAP: Final = {"SOAP": SOAP_NS, "eb": EB_NS, "hl7ebxml": HL7EBXML_NS, "xlink": XLINK_NS}
_XML_MEDIA_TYPES: Final = frozenset({"text/xml", "application/xml"})
_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>'


def q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


@dataclass(frozen=True)
class MessageHeader:
    from_party: str
    to_party: str
    cpa_id: str
    conversation_id: str
    service: str
    action: str
    message_id: str
    timestamp: str
    ref_to_message_id: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    header: MessageHeader
    hl7: bytes | None


class EbxmlReadError(ValueError):
    """The MIME framing or the SOAP envelope cannot be read, so there is no MessageId to answer."""


def utc_timestamp(moment: datetime) -> str:
    """An ebXML timestamp: UTC to the second (docs/decisions.md#d5)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def serialise(root: etree._Element) -> bytes:
    # A constant declaration: lxml's own is followed by a bare LF.
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def _eb(path: str) -> str:
    """A path of eb: elements in Clark notation: lxml caches it compiled, which a prefix map defeats."""
    return "/".join(q(EB_NS, name) for name in path.split("/"))


_MESSAGE_HEADER: Final = f"{q(SOAP_NS, 'Header')}/{q(EB_NS, 'MessageHeader')}"
_HEADER_FIELDS: Final = {
    "from_party": _eb("From/PartyId"),
    "to_party": _eb("To/PartyId"),
    "cpa_id": _eb("CPAId"),
    "conversation_id": _eb("ConversationId"),
    "service": _eb("Service"),
    "action": _eb("Action"),
    "message_id": _eb("MessageData/MessageId"),
    "timestamp": _eb("MessageData/Timestamp"),
    "ref_to_message_id": _eb("MessageData/RefToMessageId"),
}


_REFERENCES: Final = f"{q(SOAP_NS, 'Body')}/{_eb('Manifest/Reference')}"


# --- writing -----------------------------------------------------------------------------------------------


def el(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def extension_attributes(actor: str | None = None) -> dict[str, str]:
    """What every ebXML header extension element carries."""
    attributes = {q(SOAP_NS, "mustUnderstand"): "1", q(EB_NS, "version"): "2.0"}
    if actor is not None:
        attributes[q(SOAP_NS, "actor")] = actor
    return attributes


def new_envelope(nsmap: dict[str, str] = _NSMAP) -> tuple[etree._Element, etree._Element, etree._Element]:
    """SOAP Envelope, Header and Body."""
    envelope = etree.Element(q(SOAP_NS, "Envelope"), nsmap=nsmap)
    return envelope, el(envelope, q(SOAP_NS, "Header")), el(envelope, q(SOAP_NS, "Body"))


def _party(parent: etree._Element, tag: str, party_key: str) -> None:
    el(el(parent, q(EB_NS, tag)), q(EB_NS, "PartyId"), party_key, **{q(EB_NS, "type"): PARTY_TYPE})


def add_message_header(soap_header: etree._Element, header: MessageHeader) -> None:
    element = el(soap_header, q(EB_NS, "MessageHeader"), **extension_attributes())
    _party(element, "From", header.from_party)
    _party(element, "To", header.to_party)
    el(element, q(EB_NS, "CPAId"), header.cpa_id)
    el(element, q(EB_NS, "ConversationId"), header.conversation_id)
    el(element, q(EB_NS, "Service"), header.service)
    el(element, q(EB_NS, "Action"), header.action)
    data = el(element, q(EB_NS, "MessageData"))
    el(data, q(EB_NS, "MessageId"), header.message_id)
    el(data, q(EB_NS, "Timestamp"), header.timestamp)
    if header.ref_to_message_id:
        el(data, q(EB_NS, "RefToMessageId"), header.ref_to_message_id)


def _manifest(body: etree._Element, payload_cid: str) -> None:
    reference = el(
        el(body, q(EB_NS, "Manifest"), **extension_attributes()),
        q(EB_NS, "Reference"),
        **{q(XLINK_NS, "href"): f"cid:{payload_cid}"},
    )
    el(
        reference,
        q(EB_NS, "Schema"),
        **{
            q(EB_NS, "location"): "http://www.nhsia.nhs.uk/schemas/HL7-Message.xsd",
            q(EB_NS, "version"): "1.0",
        },
    )
    el(reference, q(EB_NS, "Description"), "HL7 payload", **{q(XML_NS, "lang"): "en"})
    el(reference, q(HL7EBXML_NS, "Payload"), style="HL7", encoding="XML", version="3.0")


def _template() -> etree._Element:
    """A reply envelope with every field present, built once: build_message copies it and fills it in."""
    envelope, soap_header, soap_body = new_envelope()
    add_message_header(soap_header, MessageHeader(**dict.fromkeys(_HEADER_FIELDS, "-")))
    _manifest(soap_body, "-")
    return envelope


_TEMPLATE: Final = _template()


def build_message(header: MessageHeader, hl7: bytes) -> tuple[dict[str, str], bytes]:
    """HTTP headers and multipart body of a reply: express route (docs/protocol.md#p2), so no SyncReply and
    no AckRequested."""
    payload_cid = f"{header.message_id}@{CONTENT_ID_DOMAIN}"
    envelope = copy.deepcopy(_TEMPLATE)
    fields = envelope.find(_MESSAGE_HEADER)
    assert fields is not None
    for name, path in _HEADER_FIELDS.items():
        element = fields.find(path)
        assert element is not None
        value = getattr(header, name)
        if value is None:
            # Only RefToMessageId is optional; a message that answers nothing has none.
            parent = element.getparent()
            assert parent is not None
            parent.remove(element)
        else:
            element.text = value
    (reference,) = envelope.findall(_REFERENCES)
    reference.set(q(XLINK_NS, "href"), f"cid:{payload_cid}")
    body = mime.build_related([(EBXML_CONTENT_ID, serialise(envelope)), (payload_cid, hl7)], BOUNDARY)
    return {"Content-Type": CONTENT_TYPE, "SOAPAction": f"{header.service}/{header.action}"}, body


# --- reading -----------------------------------------------------------------------------------------------


def _text(parent: etree._Element, path: str) -> str:
    # The header's fields are plain text elements; anything nested in them is not part of the value.
    return (parent.findtext(path) or "").strip()


def _envelope(data: bytes) -> etree._Element:
    try:
        root = parse_xml(data)
    except XmlError as exc:
        raise EbxmlReadError(f"ebXML part: {exc}") from None
    if root.tag != q(SOAP_NS, "Envelope"):
        raise EbxmlReadError("ebXML part is not a SOAP 1.1 envelope")
    return root


def _header(envelope: etree._Element) -> MessageHeader:
    element = envelope.find(_MESSAGE_HEADER)
    if element is None:
        raise EbxmlReadError("SOAP header without eb:MessageHeader")
    # Missing fields read as "", so that the server's checks, not this reader, decide how to answer.
    field = {name: _text(element, path) for name, path in _HEADER_FIELDS.items()}
    return MessageHeader(
        from_party=field["from_party"],
        to_party=field["to_party"],
        cpa_id=field["cpa_id"],
        conversation_id=field["conversation_id"],
        service=field["service"],
        action=field["action"],
        message_id=field["message_id"],
        timestamp=field["timestamp"],
        ref_to_message_id=field["ref_to_message_id"] or None,
    )


def _payload_cid(envelope: etree._Element) -> str | None:
    """The Content-Id the Manifest gives for the HL7 payload (any reference, when none is marked HL7)."""
    references = envelope.findall(_REFERENCES)
    marked = [
        ref
        for ref in references
        if ref.find(q(HL7EBXML_NS, "Payload")) is not None
        or ref.find(q(HL7EBXML_NS_ALT, "Payload")) is not None
    ]
    for ref in marked or references:
        href = (ref.get(q(XLINK_NS, "href")) or "").strip()
        if href[:4].lower() == "cid:":
            return mime.normalise_content_id(unquote(href[4:]))
    return None


def _check_xml(part: mime.MimePart, what: str) -> None:
    if part.media_type not in _XML_MEDIA_TYPES:
        raise EbxmlReadError(f"{what} part is not text/xml or application/xml")


def read_message(content_type: str, body: bytes) -> InboundMessage:
    """An incoming ebXML message: multipart/related, or a bare SOAP envelope (a signal without payload)."""
    if mime.media_type(content_type) in _XML_MEDIA_TYPES:
        return InboundMessage(_header(_envelope(body)), None)
    try:
        related = mime.read_related(content_type, body)
    except mime.MimeError as exc:
        raise EbxmlReadError(str(exc)) from None
    root = related.root
    _check_xml(root, "ebXML")
    envelope = _envelope(root.content)
    others = [part for part in related.parts if part is not root]
    cid = _payload_cid(envelope)
    if cid is None:
        payload = others[0] if others else None
    else:
        payload = next((part for part in others if part.content_id == cid), None)
        if payload is None:
            raise EbxmlReadError("the Manifest references a MIME part that is not in the message")
    if payload is not None:
        _check_xml(payload, "HL7")
    return InboundMessage(_header(envelope), payload.content if payload is not None else None)


def acknowledges(body: bytes, message_id: str) -> bool:
    """True when ``body`` is an eb:Acknowledgment of ``message_id`` and carries no eb:ErrorList."""
    try:
        root = parse_xml(body)
    except XmlError:
        return False
    if root.find(f".//{q(EB_NS, 'ErrorList')}") is not None:
        return False
    refs = root.findall(f".//{_eb('Acknowledgment/RefToMessageId')}")
    return any((ref.text or "").strip().upper() == message_id.upper() for ref in refs)
