"""Spine ebXML messaging: SOAP/ebXML headers, acknowledgements, errors and Spine's synchronous answers.

Transport envelope only: no HTTP and no knowledge of the HL7 payload (docs/protocol.md#p3 to
docs/protocol.md#p12). The multipart/related framing around the envelope is batch.mime's.
"""

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import cast
from urllib.parse import unquote

from lxml import etree

from batch import mime
from batch.xmlsafe import XmlError, parse_xml

SERVICE = "urn:nhs:names:services:cpisquery"
ACTION_QUERY = "QUPC_IN000006GB01"
REPLY_ACTIONS = frozenset({"REPC_IN000007GB01", "QUQI_IN010000UK14", "MCCI_IN010000UK13"})
BOUNDARY = "--=_MIME-Boundary"
EBXML_CONTENT_ID = "ebXMLHeader@spine.nhs.uk"
CONTENT_ID_DOMAIN = "spine.nhs.uk"
CONTENT_TYPE = f'multipart/related; boundary="{BOUNDARY}"; type="text/xml"; start="<{EBXML_CONTENT_ID}>"'
# Content-Type of our acknowledgement and MessageError responses (docs/protocol.md#p12).
SIGNAL_CONTENT_TYPE = "text/xml; charset=UTF-8"
MSH_SERVICE = "urn:oasis:names:tc:ebxml-msg:service"
PARTY_TYPE = "urn:nhs:names:partyType:ocs+serviceInstance"
RETRIABLE_FAULT_CODES = frozenset({"200", "206", "208"})

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EB_NS = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
HL7EBXML_NS = "urn:hl7-org:transport/ebXML/DSTUv1.0"
# NHS code also writes the lowercase spelling; inbound accepts both (docs/protocol.md#p4).
HL7EBXML_NS_ALT = "urn:hl7-org:transport/ebxml/DSTUv1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
NASP_NS = "http://national.carerecords.nhs.uk/schema/"
_XML_NS = "http://www.w3.org/XML/1998/namespace"

_NSMAP = {"SOAP": SOAP_NS, "eb": EB_NS, "hl7ebxml": HL7EBXML_NS, "xlink": XLINK_NS}
_NS = {"SOAP": SOAP_NS, "eb": EB_NS, "nasp": NASP_NS, "xlink": XLINK_NS}
_TO_PARTY_MSH = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
_NEXT_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"
_ERROR_CODE_CONTEXT = "urn:oasis:names:tc:ebxml-msg:service:errors"
_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
_XML_MEDIA_TYPES = frozenset({"text/xml", "application/xml"})
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})
_MAX_DESCRIPTION = 500

_UPPER_UUID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
_SERVICE_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9.+_-]*(?::[A-Za-z0-9.+_-]+)+")
_ACTION_TOKEN = re.compile(r"[A-Za-z0-9_]+")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _q(namespace: str, name: str) -> str:
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
class EbxmlMessage:
    header: MessageHeader
    hl7: bytes | None
    soap_action: str | None


class EbxmlParseError(ValueError):
    """The MIME framing or the ebXML header cannot be read (the endpoint answers HTTP 500, plain text)."""


@dataclass(frozen=True)
class HeaderProblem:
    error_code: str
    description: str


@dataclass(frozen=True)
class Accepted:
    pass


@dataclass(frozen=True)
class Rejected:
    code: str
    description: str
    retriable: bool


SyncAnswer = Accepted | Rejected


def utc_timestamp(moment: datetime) -> str:
    """ebXML timestamp, UTC to the second (docs/decisions.md#d5)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("ebXML timestamps need a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- validation of values that end up in MIME or HTTP headers -------------------------------------------


def _require_message_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _UPPER_UUID.fullmatch(value):
        raise ValueError(f"{what} must be an uppercase UUID")
    return value


def _require_text(value: str | None, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _require_line(value: str | None, what: str) -> str:
    # A line break inside the SOAP part could forge a MIME delimiter; header values never need one.
    text = _require_text(value, what)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError(f"{what} must not contain control characters")
    return text


def _validate_outbound(header: MessageHeader) -> None:
    _require_message_id(header.message_id, "message_id")
    if not _SERVICE_TOKEN.fullmatch(header.service):
        raise ValueError("service must be a URN without spaces or separators")
    if not _ACTION_TOKEN.fullmatch(header.action):
        raise ValueError("action must be an interaction id")
    if not _TIMESTAMP.fullmatch(header.timestamp):
        raise ValueError("timestamp must be UTC YYYY-MM-DDThh:mm:ssZ")
    for name in ("from_party", "to_party", "cpa_id", "conversation_id"):
        _require_line(getattr(header, name), name)
    if header.ref_to_message_id is not None:
        _require_line(header.ref_to_message_id, "ref_to_message_id")


# --- building ---------------------------------------------------------------------------------------------


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _envelope() -> tuple[etree._Element, etree._Element, etree._Element]:
    envelope = etree.Element(_q(SOAP_NS, "Envelope"), nsmap=_NSMAP)
    header = _el(envelope, _q(SOAP_NS, "Header"))
    body = _el(envelope, _q(SOAP_NS, "Body"))
    return envelope, header, body


def _ext_attrs(actor: str | None = None) -> dict[str, str]:
    attrs = {_q(SOAP_NS, "mustUnderstand"): "1", _q(EB_NS, "version"): "2.0"}
    if actor is not None:
        attrs[_q(SOAP_NS, "actor")] = actor
    return attrs


def _party(parent: etree._Element, tag: str, party_key: str) -> None:
    wrapper = _el(parent, _q(EB_NS, tag))
    party = _el(wrapper, _q(EB_NS, "PartyId"), party_key)
    party.set(_q(EB_NS, "type"), PARTY_TYPE)


def _message_header(soap_header: etree._Element, header: MessageHeader) -> etree._Element:
    element = etree.SubElement(soap_header, _q(EB_NS, "MessageHeader"), _ext_attrs())
    _party(element, "From", header.from_party)
    _party(element, "To", header.to_party)
    _el(element, _q(EB_NS, "CPAId"), header.cpa_id)
    _el(element, _q(EB_NS, "ConversationId"), header.conversation_id)
    _el(element, _q(EB_NS, "Service"), header.service)
    _el(element, _q(EB_NS, "Action"), header.action)
    data = _el(element, _q(EB_NS, "MessageData"))
    _el(data, _q(EB_NS, "MessageId"), header.message_id)
    _el(data, _q(EB_NS, "Timestamp"), header.timestamp)
    if header.ref_to_message_id:
        _el(data, _q(EB_NS, "RefToMessageId"), header.ref_to_message_id)
    return element


def _serialise(root: etree._Element) -> bytes:
    # lxml puts a bare LF after its own declaration; a constant one keeps the document on one CRLF-free line.
    return _XML_DECLARATION + etree.tostring(root, xml_declaration=False, encoding="UTF-8")


def _manifest(body: etree._Element, payload_cid: str) -> etree._Element:
    manifest = etree.SubElement(body, _q(EB_NS, "Manifest"), _ext_attrs())
    reference = _el(manifest, _q(EB_NS, "Reference"))
    reference.set(_q(XLINK_NS, "href"), f"cid:{payload_cid}")
    schema = _el(reference, _q(EB_NS, "Schema"))
    schema.set(_q(EB_NS, "location"), "http://www.nhsia.nhs.uk/schemas/HL7-Message.xsd")
    schema.set(_q(EB_NS, "version"), "1.0")
    description = _el(reference, _q(EB_NS, "Description"), "HL7 payload")
    description.set(_q(_XML_NS, "lang"), "en")
    _el(reference, _q(HL7EBXML_NS, "Payload"), style="HL7", encoding="XML", version="3.0")
    return reference


class MessageTemplate:
    """The ebXML message for one sender, Spine and interaction, built once; `render` fills one attempt in.

    The envelope's fixed parts are built and checked once per job; each attempt sets its conversation id,
    message id, timestamp and payload reference on the same lxml tree and serialises it. `render` is for one
    thread at a time (the event loop).
    """

    def __init__(
        self, *, from_party: str, to_party: str, cpa_id: str, service: str, action: str, refers: bool = False
    ) -> None:
        placeholder = "00000000-0000-4000-8000-000000000000"
        header = MessageHeader(
            from_party=from_party,
            to_party=to_party,
            cpa_id=cpa_id,
            conversation_id=placeholder,
            service=service,
            action=action,
            message_id=placeholder,
            timestamp="1970-01-01T00:00:00Z",
            ref_to_message_id=placeholder if refers else None,
        )
        _validate_outbound(header)
        envelope, soap_header, soap_body = _envelope()
        element = _message_header(soap_header, header)
        etree.SubElement(soap_header, _q(EB_NS, "SyncReply"), _ext_attrs(_NEXT_ACTOR))
        self._reference = _manifest(soap_body, f"{placeholder}@{CONTENT_ID_DOMAIN}")
        self._conversation_id = _child(element, "ConversationId")
        self._message_id = _child(_child(element, "MessageData"), "MessageId")
        self._timestamp = _child(_child(element, "MessageData"), "Timestamp")
        self._ref_to = _child(_child(element, "MessageData"), "RefToMessageId") if refers else None
        self._envelope = envelope
        self._headers = {"Content-Type": CONTENT_TYPE, "SOAPAction": f"{service}/{action}"}

    def render(
        self,
        *,
        conversation_id: str,
        message_id: str,
        timestamp: str,
        hl7: bytes,
        ref_to_message_id: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """HTTP headers and multipart body for one message (docs/protocol.md#p3). Raises ValueError for a bad
        value, or for a RefToMessageId given to a template without one (or missing from one with one)."""
        if (ref_to_message_id is None) != (self._ref_to is None):
            raise ValueError("ref_to_message_id must be given exactly when the template refers to a message")
        if self._ref_to is not None:
            self._ref_to.text = _require_line(ref_to_message_id, "ref_to_message_id")
        _require_message_id(message_id, "message_id")
        _require_line(conversation_id, "conversation_id")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise ValueError("timestamp must be UTC YYYY-MM-DDThh:mm:ssZ")
        if not hl7:
            raise ValueError("the HL7 payload is empty")
        # A delimiter inside the payload would split it into bogus parts on the receiving side.
        if mime.contains_delimiter(hl7, BOUNDARY):
            raise ValueError("the HL7 payload contains the MIME boundary")
        payload_cid = f"{message_id}@{CONTENT_ID_DOMAIN}"
        self._conversation_id.text = conversation_id
        self._message_id.text = message_id
        self._timestamp.text = timestamp
        self._reference.set(_q(XLINK_NS, "href"), f"cid:{payload_cid}")
        soap = _serialise(self._envelope)
        if mime.contains_delimiter(soap, BOUNDARY):
            raise ValueError("a header value contains the MIME boundary")
        body = mime.build_related([(EBXML_CONTENT_ID, soap), (payload_cid, hl7)], BOUNDARY)
        return dict(self._headers), body


def build_message(header: MessageHeader, hl7: bytes) -> tuple[dict[str, str], bytes]:
    """HTTP headers and multipart body for one ebXML message carrying an HL7 payload (docs/protocol.md#p3);
    a job renders a `MessageTemplate` instead."""
    template = MessageTemplate(
        from_party=header.from_party,
        to_party=header.to_party,
        cpa_id=header.cpa_id,
        service=header.service,
        action=header.action,
        refers=header.ref_to_message_id is not None,
    )
    return template.render(
        conversation_id=header.conversation_id,
        message_id=header.message_id,
        timestamp=header.timestamp,
        hl7=hl7,
        ref_to_message_id=header.ref_to_message_id,
    )


def _child(parent: etree._Element, name: str) -> etree._Element:
    element = parent.find(_q(EB_NS, name))
    assert element is not None  # built just above
    return element


def _signal_header(
    *,
    from_party: str,
    to_party: str,
    cpa_id: str,
    conversation_id: str,
    action: str,
    message_id: str,
    now: datetime,
    ref_to_message_id: str,
) -> tuple[etree._Element, etree._Element]:
    _require_message_id(message_id, "message_id")
    envelope, soap_header, _ = _envelope()
    header = MessageHeader(
        from_party=from_party,
        to_party=to_party,
        cpa_id=cpa_id,
        conversation_id=conversation_id,
        service=MSH_SERVICE,
        action=action,
        message_id=message_id,
        timestamp=utc_timestamp(now),
        ref_to_message_id=ref_to_message_id or None,
    )
    _message_header(soap_header, header)
    return envelope, soap_header


class AckTemplate:
    """Our eb:Acknowledgment to one party under one CPA, built once; `render` fills one inbound message in.

    Replies are acknowledged one per child, so the envelope is built and checked once and each
    acknowledgement sets its ids and timestamps on the same lxml tree (about a fifth of the cost of building
    it). A lock keeps `render` whole when large replies are read in worker threads.
    """

    def __init__(self, *, our_party_key: str, to_party: str, cpa_id: str) -> None:
        _require_text(our_party_key, "our_party_key")
        placeholder = "00000000-0000-4000-8000-000000000000"
        envelope, soap_header = _signal_header(
            from_party=our_party_key,
            to_party=to_party,
            cpa_id=cpa_id,
            conversation_id=placeholder,
            action="Acknowledgment",
            message_id=placeholder.upper(),
            now=datetime(1970, 1, 1, tzinfo=UTC),
            ref_to_message_id=placeholder,
        )
        ack = etree.SubElement(soap_header, _q(EB_NS, "Acknowledgment"), _ext_attrs(_TO_PARTY_MSH))
        self._ack_timestamp = _el(ack, _q(EB_NS, "Timestamp"), placeholder)
        self._ack_ref_to = _el(ack, _q(EB_NS, "RefToMessageId"), placeholder)
        _party(ack, "From", our_party_key)
        element = _child(soap_header, "MessageHeader")
        data = _child(element, "MessageData")
        self._conversation_id = _child(element, "ConversationId")
        self._message_id = _child(data, "MessageId")
        self._timestamp = _child(data, "Timestamp")
        self._ref_to = _child(data, "RefToMessageId")
        self._envelope = envelope
        self._lock = threading.Lock()
        self.to_party = to_party
        self.cpa_id = cpa_id

    def render(self, inbound: MessageHeader, *, ack_message_id: str, now: datetime) -> bytes:
        """The acknowledgement of `inbound`, which must come from this template's party under its CPA.

        Raises ValueError for a bad id, a naive `now`, or an inbound message from another party or CPA.
        """
        if inbound.from_party != self.to_party or inbound.cpa_id != self.cpa_id:
            raise ValueError("the inbound message is not from this template's party and CPA")
        _require_text(inbound.message_id, "inbound message_id")
        _require_message_id(ack_message_id, "message_id")
        stamp = utc_timestamp(now)
        with self._lock:
            self._conversation_id.text = inbound.conversation_id
            self._message_id.text = ack_message_id
            self._timestamp.text = stamp
            self._ref_to.text = inbound.message_id
            self._ack_timestamp.text = stamp
            self._ack_ref_to.text = inbound.message_id
            return _serialise(self._envelope)


def build_acknowledgement(
    inbound: MessageHeader, *, our_party_key: str, ack_message_id: str, now: datetime
) -> bytes:
    """Our eb:Acknowledgment for an accepted inbound message (docs/protocol.md#p12); the HTTP 200 body. A
    reader of many messages from one party renders an `AckTemplate` instead."""
    _require_text(inbound.message_id, "inbound message_id")
    template = AckTemplate(our_party_key=our_party_key, to_party=inbound.from_party, cpa_id=inbound.cpa_id)
    return template.render(inbound, ack_message_id=ack_message_id, now=now)


def _error_list(soap_header: etree._Element, *, error_code: str, description: str, severity: str) -> None:
    if severity not in ("Error", "Warning"):
        raise ValueError("severity must be Error or Warning")
    _require_text(error_code, "error_code")
    _require_text(description, "description")
    attrs = _ext_attrs()
    # With a single eb:Error the highest severity is its own.
    attrs[_q(EB_NS, "highestSeverity")] = severity
    error_list = etree.SubElement(soap_header, _q(EB_NS, "ErrorList"), attrs)
    error = _el(error_list, _q(EB_NS, "Error"))
    error.set(_q(EB_NS, "codeContext"), _ERROR_CODE_CONTEXT)
    error.set(_q(EB_NS, "errorCode"), error_code)
    error.set(_q(EB_NS, "severity"), severity)
    text = _el(error, _q(EB_NS, "Description"), description)
    text.set(_q(_XML_NS, "lang"), "en")


def build_message_error(
    inbound: MessageHeader,
    *,
    our_party_key: str,
    error_message_id: str,
    now: datetime,
    error_code: str,
    description: str,
    severity: str = "Error",
) -> bytes:
    """Our MessageError (HTTP 200) for an inbound message whose header fails a docs/protocol.md#p10 check."""
    _require_text(our_party_key, "our_party_key")
    envelope, soap_header = _signal_header(
        from_party=our_party_key,
        to_party=inbound.from_party,
        cpa_id=inbound.cpa_id,
        conversation_id=inbound.conversation_id,
        action="MessageError",
        message_id=error_message_id,
        now=now,
        ref_to_message_id=inbound.message_id,
    )
    _error_list(soap_header, error_code=error_code, description=description, severity=severity)
    return _serialise(envelope)


# --- inbound parsing --------------------------------------------------------------------------------------


def _check_xml_part(part: mime.MimePart, what: str) -> None:
    value = part.content_type
    if value is None:
        return
    media_type, params = mime.parse_content_type(value)
    if media_type not in _XML_MEDIA_TYPES:
        raise EbxmlParseError(f"{what} part is not text/xml or application/xml")
    charset = params.get("charset")
    if charset is not None and charset.strip().lower() not in _UTF8_CHARSETS:
        raise EbxmlParseError(f"{what} part is not UTF-8")


def _parse_envelope(data: bytes) -> etree._Element:
    try:
        root = parse_xml(data)
    except XmlError as exc:
        raise EbxmlParseError(f"ebXML part: {exc}") from None
    if root.tag != _q(SOAP_NS, "Envelope"):
        raise EbxmlParseError("ebXML part is not a SOAP 1.1 envelope")
    return root


def _text(parent: etree._Element, path: str) -> str:
    element = parent.find(path, _NS)
    if element is None:
        return ""
    # itertext yields str for a tree parsed from bytes; lxml-stubs types it str | bytes.
    return "".join(cast("Iterator[str]", element.itertext())).strip()


def _read_header(envelope: etree._Element) -> MessageHeader:
    element = envelope.find("SOAP:Header/eb:MessageHeader", _NS)
    if element is None:
        raise EbxmlParseError("SOAP header without eb:MessageHeader")
    # Missing fields become "" so that check_inbound_header, not the parser, decides what to answer.
    return MessageHeader(
        from_party=_text(element, "eb:From/eb:PartyId"),
        to_party=_text(element, "eb:To/eb:PartyId"),
        cpa_id=_text(element, "eb:CPAId"),
        conversation_id=_text(element, "eb:ConversationId"),
        service=_text(element, "eb:Service"),
        action=_text(element, "eb:Action"),
        message_id=_text(element, "eb:MessageData/eb:MessageId"),
        timestamp=_text(element, "eb:MessageData/eb:Timestamp"),
        ref_to_message_id=_text(element, "eb:MessageData/eb:RefToMessageId") or None,
    )


def _manifest_cids(envelope: etree._Element) -> list[str]:
    references = envelope.findall("SOAP:Body/eb:Manifest/eb:Reference", _NS)
    hl7_refs = [
        ref
        for ref in references
        if ref.find(_q(HL7EBXML_NS, "Payload")) is not None
        or ref.find(_q(HL7EBXML_NS_ALT, "Payload")) is not None
    ]
    cids = []
    for ref in hl7_refs or references:
        href = (ref.get(_q(XLINK_NS, "href")) or ref.get("href") or "").strip()
        if href[:4].lower() == "cid:":
            cids.append(mime.normalise_content_id(unquote(href[4:])))
    return cids


def _payload_part(
    envelope: etree._Element, parts: list[mime.MimePart], root: mime.MimePart
) -> mime.MimePart | None:
    others = [part for part in parts if part is not root]
    cids = _manifest_cids(envelope)
    if cids:
        for part in others:
            if part.content_id == cids[0]:
                return part
        raise EbxmlParseError("the Manifest references a MIME part that is not in the message")
    return others[0] if others else None


def _clean_soap_action(value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = value.strip().strip('"').strip()
    return cleaned or None


def parse_message(content_type: str, body: bytes, soap_action: str | None = None) -> EbxmlMessage:
    """Read an inbound ebXML message tolerantly (docs/protocol.md#p9); check_inbound_header judges it."""
    parsed_type = mime.parse_content_type(content_type or "")
    if parsed_type.media_type in _XML_MEDIA_TYPES:
        # A bare SOAP message: an ebXML signal without payload.
        envelope = _parse_envelope(body)
        return EbxmlMessage(_read_header(envelope), None, _clean_soap_action(soap_action))
    try:
        parts = mime.parse_related(parsed_type, body)
    except mime.MimeError as exc:
        raise EbxmlParseError(str(exc)) from exc
    root = mime.root_part(parts, parsed_type.params.get("start"))
    _check_xml_part(root, "ebXML")
    envelope = _parse_envelope(root.content)
    header = _read_header(envelope)
    payload = _payload_part(envelope, parts, root)
    if payload is not None:
        _check_xml_part(payload, "HL7")
    return EbxmlMessage(header, payload.content if payload else None, _clean_soap_action(soap_action))


def check_inbound_header(header: MessageHeader, our_party_key: str) -> HeaderProblem | None:
    """Checks 1-3 of docs/protocol.md#p10, in table order; None when the message may be processed."""
    if header.to_party != our_party_key:
        return HeaderProblem("ValueNotRecognized", "501314:Invalid To Party Type attribute")
    if header.service != SERVICE or header.action not in REPLY_ACTIONS:
        return HeaderProblem("NotSupported", "eb:Service/eb:Action not supported by this endpoint")
    if not header.message_id:
        return HeaderProblem("Inconsistent", "eb:MessageId is missing")
    return None


# --- Spine's synchronous answer ---------------------------------------------------------------------------


def _sync_envelope(content_type: str | None, body: bytes) -> etree._Element | None:
    if not body.strip():
        return None
    media_type, params = mime.parse_content_type(content_type or "")
    data = body
    if media_type.startswith("multipart/"):
        try:
            parts = mime.split_multipart(body, params.get("boundary") or "")
        except mime.MimeError:
            return None
        data = mime.root_part(parts, params.get("start")).content
    try:
        root = parse_xml(data)
    except XmlError:
        return None
    return root if root.tag == _q(SOAP_NS, "Envelope") else None


def _attr(element: etree._Element, name: str) -> str:
    # ebMS qualifies these attributes; some senders leave them unqualified.
    return (element.get(_q(EB_NS, name)) or element.get(name) or "").strip()


def _bounded(text: str) -> str:
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def _message_error(envelope: etree._Element) -> Rejected | None:
    errors = envelope.findall(".//eb:ErrorList/eb:Error", _NS)
    # Warnings do not stop processing (ebMS 2.0 section 4.2.3.2); only errors reject the message.
    blocking = [error for error in errors if _attr(error, "severity").lower() != "warning"]
    if not blocking:
        return None
    codes = [_attr(error, "errorCode") or "unknown" for error in blocking]
    descriptions = [
        _text(error, "eb:Description") or code for error, code in zip(blocking, codes, strict=True)
    ]
    return Rejected("MessageError:" + ",".join(codes), _bounded("; ".join(descriptions)), retriable=False)


def _soap_fault(envelope: etree._Element) -> Rejected | None:
    fault = envelope.find("SOAP:Body/SOAP:Fault", _NS)
    if fault is None:
        return None
    errors = fault.findall(".//nasp:errorList/nasp:error", _NS)
    codes = [_text(error, "nasp:errorCode") for error in errors]
    codes = [code for code in codes if code]
    if not codes:
        return None
    descriptions = [_text(error, "nasp:description") for error in errors]
    description = "; ".join(text for text in descriptions if text) or _text(fault, "faultstring")
    retriable = all(code in RETRIABLE_FAULT_CODES for code in codes)
    return Rejected(
        "SOAPFault:" + ",".join(codes), _bounded(description or "SOAP fault"), retriable=retriable
    )


def classify_sync_answer(status: int, content_type: str | None, body: bytes) -> SyncAnswer:
    """Classify Spine's HTTP response to our POST (docs/protocol.md#p8): accepted, or rejected and whether
    to resend."""
    envelope = _sync_envelope(content_type, body)
    if envelope is not None:
        rejection = _message_error(envelope) or _soap_fault(envelope)
        if rejection is not None:
            # A client error is never retried, whatever the fault codes say.
            if 400 <= status < 500 and rejection.retriable:
                return replace(rejection, retriable=False)
            return rejection
    if status in (200, 202):
        # No error signal: an empty body or an eb:Acknowledgment means accepted. Anything else on a 200 is
        # not proof of acceptance, so the attempt fails rather than waiting on a reply that may never come.
        if not body.strip() or (
            envelope is not None and envelope.find(".//eb:Acknowledgment", _NS) is not None
        ):
            return Accepted()
        if envelope is not None and envelope.find(".//eb:ErrorList", _NS) is not None:
            return Accepted()  # warnings only
        return Rejected("unrecognised_response", f"HTTP {status} without an ebXML signal", retriable=False)
    if 400 <= status < 500:
        return Rejected(f"http_{status}", f"HTTP {status} from Spine", retriable=False)
    if 500 <= status < 600:
        return Rejected(f"http_{status}", f"HTTP {status} from Spine", retriable=True)
    return Rejected(f"http_{status}", f"unexpected HTTP {status} from Spine", retriable=False)
