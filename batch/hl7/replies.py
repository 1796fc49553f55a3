"""Reading Spine's replies tolerantly (docs/protocol.md#p13, docs/protocol.md#p14, docs/protocol.md#p16).

`parse_reply` raises only for bytes that are not XML or hold no interaction we know; every other
deviation becomes a short, data-free warning on the result.
"""

import re

from lxml import etree

from batch.hl7.errors import ReplyParseError
from batch.hl7.namespaces import (
    APP_ACK_INTERACTION,
    HL7_NS,
    QUERY_FAILED_INTERACTION,
    RESPONSE_INTERACTION,
)
from batch.hl7.payload import read_payloads
from batch.hl7.reply_types import (
    AppAcknowledgement,
    Issue,
    ParsedReply,
    QueryFailed,
    QueryResponse,
    WarningLog,
)
from batch.hl7.xmlnav import attr, descendants, every, first, first_attr, local_name, namespace
from batch.xmlsafe import XmlError, parse_xml

__all__ = ["DEFAULT_NOT_FOUND_CODES", "parse_reply"]

# Seen in the NHS test kit for "no record"; the real codes are to confirm at NHS onboarding.
DEFAULT_NOT_FOUND_CODES = frozenset({"NHSNCC002"})

_INTERACTIONS = frozenset({RESPONSE_INTERACTION, QUERY_FAILED_INTERACTION, APP_ACK_INTERACTION})
_NOT_FOUND_TEXT = re.compile(r"not\s+found|no\s+record", re.IGNORECASE)


def parse_reply(hl7: bytes, *, not_found_codes: frozenset[str] = DEFAULT_NOT_FOUND_CODES) -> ParsedReply:
    try:
        root = parse_xml(hl7)
    except XmlError as exc:
        raise ReplyParseError(str(exc)) from None
    warnings = WarningLog()
    message = _find_interaction(root, warnings)
    name = local_name(message)
    declared = first_attr(every(message, "interactionId"), "extension")
    if declared is not None and declared != name:
        warnings.add("interaction_id_mismatch")
    if name == RESPONSE_INTERACTION:
        return _query_response(message, warnings)
    if name == QUERY_FAILED_INTERACTION:
        return _query_failed(message, warnings, not_found_codes)
    return _app_acknowledgement(message, warnings)


def _find_interaction(root: etree._Element, warnings: WarningLog) -> etree._Element:
    """The interaction element: the root, or (NHS synchronous test kit) an element wrapped inside it."""
    message = root if local_name(root) in _INTERACTIONS else None
    if message is None:
        message = next((el for el in root.iter() if local_name(el) in _INTERACTIONS), None)
        if message is None:
            raise ReplyParseError("no REPC_IN000007GB01, QUQI_IN010000UK14 or MCCI_IN010000UK13 element")
        warnings.add("wrapped_interaction")
    ns = namespace(message)
    if ns is None:
        warnings.add("no_hl7_namespace")
    elif ns != HL7_NS:
        warnings.add("foreign_namespace")
    return message


def _query_response(message: etree._Element, warnings: WarningLog) -> QueryResponse:
    payloads = every(message, "ControlActEvent", "subject", "CP-ISNHSQueryResponse")
    if not payloads:
        payloads = list(descendants(message, "CP-ISNHSQueryResponse"))
        if payloads:
            warnings.add("payload_misplaced")
        else:
            warnings.add("no_payload")
    payload = read_payloads(payloads, warnings)
    return QueryResponse(
        message_id=_message_id(message, warnings),
        # A response may say which query it answers; correlation also has RefToMessageId and C.
        message_ref=first_attr(every(message, "acknowledgement", "messageRef", "id"), "root"),
        response_code=_response_code(message),
        records=payload.records,
        access=payload.access,
        total_access_records=payload.total_access_records,
        total_child_records=payload.total_child_records,
        issues=_issues(message),
        warnings=warnings.freeze(),
    )


def _query_failed(
    message: etree._Element, warnings: WarningLog, not_found_codes: frozenset[str]
) -> QueryFailed:
    response_code = _response_code(message)
    issues = _issues(message)
    codes = {code.strip().upper() for code in not_found_codes}
    not_found = (
        (response_code or "").upper() == "NF"
        or any(_NOT_FOUND_TEXT.search(issue.display_name or "") for issue in issues)
        or any((issue.code or "").upper() in codes for issue in issues)
    )
    return QueryFailed(
        message_id=_message_id(message, warnings),
        message_ref=_message_ref(message, warnings),
        ack_type=attr(first(message, "acknowledgement"), "typeCode"),
        response_code=response_code,
        issues=issues,
        not_found=not_found,
        warnings=warnings.freeze(),
    )


def _app_acknowledgement(message: etree._Element, warnings: WarningLog) -> AppAcknowledgement:
    details = tuple(
        Issue(
            code=attr(code, "code"),
            code_system=attr(code, "codeSystem"),
            display_name=attr(code, "displayName"),
            qualifier=attr(detail, "typeCode"),
        )
        for detail in every(message, "acknowledgement", "acknowledgementDetail")
        for code in every(detail, "code")
    )
    return AppAcknowledgement(
        message_id=_message_id(message, warnings),
        message_ref=_message_ref(message, warnings),
        ack_type=attr(first(message, "acknowledgement"), "typeCode"),
        details=details,
        issues=_issues(message),
        warnings=warnings.freeze(),
    )


def _message_id(message: etree._Element, warnings: WarningLog) -> str | None:
    value = first_attr(every(message, "id"), "root")
    if value is None:
        warnings.add("message_id_missing")
    return value


def _message_ref(message: etree._Element, warnings: WarningLog) -> str | None:
    value = first_attr(every(message, "acknowledgement", "messageRef", "id"), "root")
    if value is None:
        warnings.add("message_ref_missing")
    return value


def _response_code(message: etree._Element) -> str | None:
    return first_attr(every(message, "ControlActEvent", "queryAck", "queryResponseCode"), "code")


def _issues(message: etree._Element) -> tuple[Issue, ...]:
    """Every detected issue (`reason/justifyingDetectedIssueEvent/code`) under the control act."""
    return tuple(
        Issue(
            code=attr(code, "code"),
            code_system=attr(code, "codeSystem"),
            display_name=attr(code, "displayName"),
            qualifier=first_attr(every(code, "qualifier"), "code"),
        )
        for event in every(message, "ControlActEvent", "reason", "justifyingDetectedIssueEvent")
        for code in every(event, "code")
    )
