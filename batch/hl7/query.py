"""The CP-IS NHS Query `QUPC_IN000006GB01` (docs/protocol.md#p5): builder and send guard."""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from lxml import etree

from batch.hl7.names import split_person_name
from batch.hl7.namespaces import (
    HL7_NS,
    OID_ASID,
    OID_INTERACTION_ID,
    OID_JOB_ROLE_NHS_DATA,
    OID_ODS_ORGANISATION,
    QUERY_INTERACTION,
)
from batch.hl7.timestamps import format_hl7_ts
from batch.hl7.xmlbuild import hl7_root, serialise, sub, template_slot
from batch.xmlsafe import XmlError, parse_xml

# Every query is a scheduled-care "silent read" (docs/decisions.md#d1). This constant is the only source of
# the value; nothing in the builder's signature can change or omit it.
SCHEDULED_CARE_FLAG: Final = "false"

DEFAULT_VERSION_CODE: Final = "v3INF_DMSv5.7:FIN"
DEFAULT_ROLE_CODE_SYSTEM: Final = OID_JOB_ROLE_NHS_DATA

_UUID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}", re.ASCII)
_NHS_NUMBER = re.compile(r"[0-9]{10}", re.ASCII)
_ASID = re.compile(r"[0-9]{12}", re.ASCII)
_FLAG_TAG = f"{{{HL7_NS}}}accessEventType"
_VALUE_TAG = f"{{{HL7_NS}}}value"


@dataclass(frozen=True)
class Sender:
    """Our system and the person nominated as responsible for its queries (docs/decisions.md#d3)."""

    asid: str
    ods_code: str
    organisation_name: str
    responsible_person_name: str
    role_code: str
    role_name: str
    role_code_system: str = DEFAULT_ROLE_CODE_SYSTEM


class UnsafeQueryError(ValueError):
    """A query that must not be sent: the scheduled-care flag is missing, repeated or not `false`."""


class QueryTemplate:
    """The query for one sender and Spine, built once; `render` fills in one attempt's values.

    The document's fixed parts (wrapper, author, device, the scheduled-care flag) are built and checked once
    per job; each attempt sets five values on the same lxml tree and serialises it, which is a small fraction
    of building it afresh. `render` is for one thread at a time (the event loop).
    """

    def __init__(self, *, sender: Sender, spine_asid: str, version_code: str = DEFAULT_VERSION_CODE) -> None:
        _check_sender(sender, spine_asid, version_code)
        placeholder = "00000000-0000-4000-8000-000000000000"
        root = hl7_root(QUERY_INTERACTION)
        self._message_id = sub(root, "id", root=placeholder)
        self._creation_time = sub(root, "creationTime", value="")
        sub(root, "versionCode", code=version_code)
        sub(root, "interactionId", root=OID_INTERACTION_ID, extension=QUERY_INTERACTION)
        sub(root, "processingCode", code="P")
        sub(root, "processingModeCode", code="T")
        sub(root, "acceptAckCode", code="NE")
        _communication_function(root, "communicationFunctionRcv", "RCV", spine_asid)
        _communication_function(root, "communicationFunctionSnd", "SND", sender.asid)

        # No ControlActEvent/author: the system initiates the query (docs/decisions.md#d3); author1 names it.
        control_act = sub(root, "ControlActEvent", classCode="CACT", moodCode="EVN")
        agent = sub(sub(control_act, "author1", typeCode="AUT"), "AgentSystemSDS", classCode="AGNT")
        system = sub(agent, "agentSystemSDS", classCode="DEV", determinerCode="INSTANCE")
        sub(system, "id", root=OID_ASID, extension=sender.asid)

        stub = sub(sub(control_act, "subject", typeCode="SUBJ"), "CP-ISQueryStub")
        query = sub(stub, "cP-ISNHSQuery")
        self._effective_time = sub(query, "effectiveTime", value="")
        self._query_id = sub(query, "id", root=placeholder)
        _device_author(sub(query, "author"), sender)
        parameters = sub(query, "queryByParameter")
        self._nhs_number = sub(sub(parameters, "person.NHSnumber"), "value", extension="")
        sub(sub(parameters, "accessEventType"), "value", value=SCHEDULED_CARE_FLAG)
        self._root = root

    def render(self, *, nhs_number: str, message_id: str, query_id: str, now: datetime) -> bytes:
        """The query as UTF-8 bytes with an XML declaration, shaped exactly like docs/protocol.md#p5.

        Raises ValueError for an NHS number that is not 10 digits or an id that is not an uppercase UUID.
        """
        if not _NHS_NUMBER.fullmatch(nhs_number):
            raise ValueError("nhs_number must be 10 digits")
        for label, identifier in (("message_id", message_id), ("query_id", query_id)):
            if not _UUID.fullmatch(identifier):
                raise ValueError(f"{label} must be an uppercase UUID")
        stamp = format_hl7_ts(now)
        self._message_id.set("root", message_id)
        self._creation_time.set("value", stamp)
        self._effective_time.set("value", stamp)
        self._query_id.set("root", query_id)
        self._nhs_number.set("extension", nhs_number)
        return serialise(self._root)


def build_query(
    *,
    nhs_number: str,
    message_id: str,
    query_id: str,
    sender: Sender,
    spine_asid: str,
    now: datetime,
    version_code: str = DEFAULT_VERSION_CODE,
) -> bytes:
    """One query on its own (a job builds a `QueryTemplate` once and renders it per attempt)."""
    template = QueryTemplate(sender=sender, spine_asid=spine_asid, version_code=version_code)
    return template.render(nhs_number=nhs_number, message_id=message_id, query_id=query_id, now=now)


def assert_scheduled_care(hl7: bytes) -> None:
    """Fail closed unless the document holds exactly one scheduled-care flag, set to `false`.

    Run on the exact bytes about to be sent, so that no bug upstream can cause an unscheduled
    query (which would notify the child's local authority).
    """
    try:
        root = parse_xml(hl7)
    except XmlError:
        raise UnsafeQueryError("refusing to send: the HL7 query is not well-formed XML") from None
    parameters = list(root.iter("{*}queryByParameter"))
    if len(parameters) != 1:
        raise UnsafeQueryError(f"refusing to send: {len(parameters)} queryByParameter elements, expected 1")
    # Counted over the whole document and in any namespace, so a stray copy anywhere also fails.
    flags = list(root.iter("{*}accessEventType"))
    if len(flags) != 1:
        raise UnsafeQueryError(f"refusing to send: {len(flags)} accessEventType elements, expected 1")
    flag = flags[0]
    if flag.getparent() is not parameters[0] or flag.tag != _FLAG_TAG:
        raise UnsafeQueryError("refusing to send: accessEventType is not an HL7 child of queryByParameter")
    values = [node for node in flag if isinstance(node.tag, str)]
    if len(values) != 1 or values[0].tag != _VALUE_TAG or values[0].get("value") != SCHEDULED_CARE_FLAG:
        raise UnsafeQueryError("refusing to send: accessEventType must hold exactly one value 'false'")


def _communication_function(root: etree._Element, tag: str, type_code: str, asid: str) -> None:
    device = sub(sub(root, tag, typeCode=type_code), "device", classCode="DEV", determinerCode="INSTANCE")
    sub(device, "id", root=OID_ASID, extension=asid)


def _device_author(author: etree._Element, sender: Sender) -> None:
    """`COCT_TP145104GB01.System` with exactly one responsible person (docs/protocol.md#p6)."""
    system = template_slot(author, "COCT_TP145104GB01.System")
    sub(system, "id", root=OID_ASID, extension=sender.asid)
    entity = sub(sub(system, "indirectAuthority"), "superiorAssignedEntity")
    sub(
        entity,
        "code",
        code=sender.role_code,
        codeSystem=sender.role_code_system,
        displayName=sender.role_name,
    )
    name = sub(sub(entity, "assignedPerson"), "name")
    person = split_person_name(sender.responsible_person_name)
    if person.prefix is not None:
        sub(name, "prefix", text=person.prefix)
    for given in person.given:
        sub(name, "given", text=given)
    sub(name, "family", text=person.family)
    organisation = sub(system, "maintainingOrganization")
    sub(organisation, "id", root=OID_ODS_ORGANISATION, extension=sender.ods_code)
    sub(organisation, "name", text=sender.organisation_name)


def _check_sender(sender: Sender, spine_asid: str, version_code: str) -> None:
    """Refuse a sender that would make a malformed query. Messages name the field, never its value."""
    for label, asid in (("sender.asid", sender.asid), ("spine_asid", spine_asid)):
        if not _ASID.fullmatch(asid):
            raise ValueError(f"{label} must be 12 digits")
    required = {
        "sender.ods_code": sender.ods_code,
        "sender.organisation_name": sender.organisation_name,
        "sender.role_code": sender.role_code,
        "sender.role_name": sender.role_name,
        "sender.role_code_system": sender.role_code_system,
        "version_code": version_code,
    }
    for label, value in required.items():
        if not value.strip():
            raise ValueError(f"{label} must not be empty")
    split_person_name(sender.responsible_person_name)
