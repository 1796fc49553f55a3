"""What Spine answers on the HTTP response when it refuses a query (docs/protocol.md#p8).

A SOAP fault (HTTP 500) for a processing error, or a synchronous ebXML MessageError for an envelope it
rejects. The client only classifies these; only the simulator builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from lxml import etree

from spine_sim.ebxml import (
    EB_NS,
    MSH_SERVICE,
    SOAP_NS,
    XML_NS,
    MessageHeader,
    add_message_header,
    el,
    extension_attributes,
    new_envelope,
    q,
    serialise,
    utc_timestamp,
)

NASP_NS: Final = "http://national.carerecords.nhs.uk/schema/"
_ERROR_CODE_CONTEXT: Final = "urn:oasis:names:tc:ebxml-msg:service:errors"


def build_soap_fault(error_codes: Sequence[str], description: str) -> bytes:
    """A Spine SOAP fault: one ``nasp:error`` per code in a ``nasp:errorList``."""
    if isinstance(error_codes, str) or not error_codes or not all(code.strip() for code in error_codes):
        raise ValueError("error_codes must be a non-empty sequence of codes")
    envelope = etree.Element(q(SOAP_NS, "Envelope"), nsmap={"SOAP": SOAP_NS, "nasp": NASP_NS})
    fault = el(el(envelope, q(SOAP_NS, "Body")), q(SOAP_NS, "Fault"))
    # SOAP 1.1 fault children are unqualified.
    el(fault, "faultcode", "SOAP:Server")
    el(fault, "faultstring", "Application Exception")
    error_list = el(el(fault, "detail"), q(NASP_NS, "errorList"))
    for code in error_codes:
        error = el(error_list, q(NASP_NS, "error"))
        el(error, q(NASP_NS, "codeContext"), "urn:nhs:names:error:tms")
        el(error, q(NASP_NS, "errorCode"), code)
        el(error, q(NASP_NS, "severity"), "Error")
        el(error, q(NASP_NS, "location"), "Not Supported")
        el(error, q(NASP_NS, "description"), description)
    return serialise(envelope)


def build_sync_message_error(
    ref_to_message_id: str,
    *,
    from_party: str,
    to_party: str,
    cpa_id: str,
    conversation_id: str,
    error_code: str,
    description: str,
    message_id: str,
    now: datetime,
) -> bytes:
    """The MessageError Spine returns on the HTTP response when it rejects an envelope: one eb:Error."""
    envelope, soap_header, _ = new_envelope()
    header = MessageHeader(
        from_party=from_party,
        to_party=to_party,
        cpa_id=cpa_id,
        conversation_id=conversation_id,
        service=MSH_SERVICE,
        action="MessageError",
        message_id=message_id,
        timestamp=utc_timestamp(now),
        ref_to_message_id=ref_to_message_id,
    )
    add_message_header(soap_header, header)
    attributes = extension_attributes()
    attributes[q(EB_NS, "highestSeverity")] = "Error"
    error = el(
        el(soap_header, q(EB_NS, "ErrorList"), **attributes),
        q(EB_NS, "Error"),
        **{
            q(EB_NS, "codeContext"): _ERROR_CODE_CONTEXT,
            q(EB_NS, "errorCode"): error_code,
            q(EB_NS, "severity"): "Error",
        },
    )
    el(error, q(EB_NS, "Description"), description, **{q(XML_NS, "lang"): "en"})
    return serialise(envelope)
