"""HL7 replies of the simulated Spine: REPC_IN000007GB01, QUQI_IN010000UK14, MCCI_IN010000UK13.

Inputs are plain data, so the simulator shares no types with the client's parser. Output follows
the shapes of docs/protocol.md#p13 and docs/protocol.md#p14 and validates against the CP-IS XSDs, with one
deliberate exception documented on `SimPlan`.
"""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import ParamSpec

from lxml import etree

from spine_sim.hl7 import (
    ACK_VERSION_CODE,
    APP_ACK_INTERACTION,
    HL7_NS,
    OID_ASID,
    OID_INTERACTION_ID,
    OID_JOB_ROLE_NHS_DATA,
    OID_NHS_NUMBER,
    OID_ODS_ORGANISATION,
    OID_SDS_USER_ID,
    OID_SPINE_ISSUE_CODES,
    QUERY_FAILED_INTERACTION,
    RESPONSE_INTERACTION,
    RESPONSE_VERSION_CODE,
    hl7_root,
    hl7_timestamp,
    serialise,
    sub,
    template_slot,
)
from spine_sim.ids import new_id

_P = ParamSpec("_P")

# nullFlavor for an open UCP end date: "not applicable", the plan has not ended.
OPEN_END_NULL_FLAVOR = "NA"
# Access entries use the smartcard template (CP-IS lists unscheduled, i.e. person-made, accesses),
# whose role code, ODS code and SDS user id the dataset does not hold: these stand in for them.
UNKNOWN_CODE = "UNK"

_PLAN_TEMPLATES = {
    "CPP": ("COCT_TP146105GB01.CPPInformation", "cPP"),
    "LAC": ("COCT_TP146103GB01.LACInformation", "lAC"),
    "UCP": ("COCT_TP146104GB01.UCPInformation", "uCP"),
}
_ACK_TYPES = {"AA": "IF", "AE": "ER", "AR": "ER"}  # acknowledgement type -> detail typeCode


@dataclass(frozen=True)
class SimPlan:
    """A plan. An open UCP (`end` None) gets `uCPEndDate/value/@nullFlavor="NA"`.

    The XSD makes the UCP end date 1..1 and forbids a nullFlavor on it, so that one case does not
    validate. A far-future date would validate but put a made-up end date into reports; the null
    says "no end" truthfully, exactly as CPP/LAC plans may, and the client reads both alike.
    """

    plan_type: str  # "CPP" | "LAC" | "UCP"
    start: date
    end: date | None


@dataclass(frozen=True)
class SimLocalAuthority:
    code: str
    name: str
    office_phone: str
    emergency_phone: str


@dataclass(frozen=True)
class SimRecord:
    """One local authority's record. For "unborn", given/family/birth_date are the mother's."""

    local_authority: SimLocalAuthority
    plans: tuple[SimPlan, ...]
    subject_kind: str  # "child" | "unborn"
    given: str
    family: str
    birth_date: date


@dataclass(frozen=True)
class SimAccess:
    time: datetime  # naive means UK local time (as the dataset stores it); aware is converted
    organisation: str
    role: str
    query_id: str


def query_response(
    *,
    reply_id: str,
    message_ref: str,
    nhs_number: str,
    spine_asid: str,
    client_asid: str,
    now: datetime,
    records: Sequence[SimRecord],
    access: Sequence[SimAccess],
) -> etree._Element:
    """REPC_IN000007GB01 (`queryAck` OK).

    `message_ref` is accepted for a signature uniform with the other builders but not written:
    the REPC has no acknowledgement element and is correlated by ebXML RefToMessageId (docs/protocol.md#p15).
    """
    if not records:
        # pertinentInformation14 is 1..*: "no record" is a QUQI, never an empty REPC.
        raise ValueError("a query response needs at least one record")
    root = _wrapper(RESPONSE_INTERACTION, reply_id, RESPONSE_VERSION_CODE, now)
    _communication_functions(root, client_asid, spine_asid)
    control_act = _control_act(root, spine_asid)
    payload = sub(sub(control_act, "subject", typeCode="SUBJ"), "CP-ISNHSQueryResponse")
    sub(payload, "effectiveTime", value=hl7_timestamp(now))
    sub(payload, "id", root=new_id())
    _total(sub(payload, "pertinentInformation11"), "pertinentTotalReturnedAccessRecords", len(access))
    _total(sub(payload, "pertinentInformation12"), "pertinentTotalReturnedChildRecords", len(records))
    for entry in access:
        _access_entry(sub(payload, "pertinentInformation13"), entry, nhs_number)
    for record in records:
        control = sub(sub(payload, "pertinentInformation14"), "pertinentCP-ISRecordControlAct")
        _record(sub(control, "record"), record, nhs_number)
    sub(sub(control_act, "queryAck"), "queryResponseCode", code="OK")
    return root


def query_failed(
    *,
    reply_id: str,
    message_ref: str,
    spine_asid: str,
    client_asid: str,
    now: datetime,
    issue_code: str,
    issue_display: str,
    response_code: str = "ID",
    qualifier: str = "ER",
) -> etree._Element:
    """QUQI_IN010000UK14 with one detected issue."""
    root = _wrapper(QUERY_FAILED_INTERACTION, reply_id, ACK_VERSION_CODE, now)
    _acknowledgement(root, "AE", message_ref, None)
    _communication_functions(root, client_asid, spine_asid)
    control_act = _control_act(root, spine_asid)
    _reason(control_act, issue_code, issue_display, qualifier)
    sub(sub(control_act, "queryAck"), "queryResponseCode", code=response_code)
    return root


def app_acknowledgement(
    *,
    reply_id: str,
    message_ref: str,
    spine_asid: str,
    client_asid: str,
    now: datetime,
    ack_type: str,
    detail_code: str,
    detail_display: str,
) -> etree._Element:
    """MCCI_IN010000UK13: the code both as acknowledgementDetail and as a detected issue, as Spine does."""
    detail_type = _ACK_TYPES.get(ack_type)
    if detail_type is None:
        raise ValueError("ack_type must be AA, AE or AR")
    root = _wrapper(APP_ACK_INTERACTION, reply_id, ACK_VERSION_CODE, now)
    _acknowledgement(root, ack_type, message_ref, (detail_type, detail_code, detail_display))
    _communication_functions(root, client_asid, spine_asid)
    control_act = _control_act(root, spine_asid)
    _reason(control_act, detail_code, detail_display, detail_type)
    return root


def _as_bytes(build: Callable[_P, etree._Element]) -> Callable[_P, bytes]:
    @functools.wraps(build)
    def serialised(*args: _P.args, **kwargs: _P.kwargs) -> bytes:
        return serialise(build(*args, **kwargs))

    return serialised


# The replies as bytes; the element-tree forms above are what the simulator copies as templates.
build_query_response = _as_bytes(query_response)
build_query_failed = _as_bytes(query_failed)
build_app_acknowledgement = _as_bytes(app_acknowledgement)


def _hl7_path(*names: str) -> str:
    return "/".join(f"{{{HL7_NS}}}{name}" for name in names)


_ID = _hl7_path("id")
_CREATION_TIME = _hl7_path("creationTime")
_MESSAGE_REF_ID = _hl7_path("acknowledgement", "messageRef", "id")
_RESPONSE = _hl7_path("ControlActEvent", "subject", "CP-ISNHSQueryResponse")
_RESPONSE_TIME = _hl7_path("effectiveTime")


def restamp(root: etree._Element, *, reply_id: str, message_ref: str, now: datetime) -> etree._Element:
    """Give a copy of a built reply the identity of a new one, in place: what a fresh build would differ in.

    The wrapper id and creation time, the acknowledged message (QUQI, MCCI) and, in a query response, the
    payload's time and id. Everything else depends only on the answer and the two ASIDs.
    """
    stamp = hl7_timestamp(now)
    _set(root, _ID, "root", reply_id)
    _set(root, _CREATION_TIME, "value", stamp)
    if (ref := root.find(_MESSAGE_REF_ID)) is not None:
        ref.set("root", message_ref)
    if (payload := root.find(_RESPONSE)) is not None:
        _set(payload, _RESPONSE_TIME, "value", stamp)
        _set(payload, _ID, "root", new_id())
    return root


def _set(parent: etree._Element, path: str, name: str, value: str) -> None:
    element = parent.find(path)
    if element is None:
        raise ValueError(f"not a reply this module built: no {path}")
    element.set(name, value)


def _wrapper(interaction: str, reply_id: str, version_code: str, now: datetime) -> etree._Element:
    """Transmission wrapper up to acceptAckCode (an acknowledgement, if any, goes next)."""
    root = hl7_root(interaction)
    sub(root, "id", root=reply_id)
    sub(root, "creationTime", value=hl7_timestamp(now))
    sub(root, "versionCode", code=version_code)
    sub(root, "interactionId", root=OID_INTERACTION_ID, extension=interaction)
    sub(root, "processingCode", code="P")
    sub(root, "processingModeCode", code="T")
    sub(root, "acceptAckCode", code="NE")
    return root


def _communication_functions(root: etree._Element, receiver_asid: str, sender_asid: str) -> None:
    for tag, type_code, asid in (
        ("communicationFunctionRcv", "RCV", receiver_asid),
        ("communicationFunctionSnd", "SND", sender_asid),
    ):
        device = sub(sub(root, tag, typeCode=type_code), "device", classCode="DEV", determinerCode="INSTANCE")
        sub(device, "id", root=OID_ASID, extension=asid)


def _acknowledgement(
    root: etree._Element, type_code: str, message_ref: str, detail: tuple[str, str, str] | None
) -> None:
    acknowledgement = sub(root, "acknowledgement", typeCode=type_code)
    if detail is not None:
        detail_type, code, display = detail
        element = sub(acknowledgement, "acknowledgementDetail", typeCode=detail_type)
        sub(element, "code", code=code, codeSystem=OID_SPINE_ISSUE_CODES, displayName=display)
    sub(sub(acknowledgement, "messageRef"), "id", root=message_ref)


def _control_act(root: etree._Element, spine_asid: str) -> etree._Element:
    control_act = sub(root, "ControlActEvent", classCode="CACT", moodCode="EVN")
    agent = sub(sub(control_act, "author1", typeCode="AUT"), "AgentSystemSDS", classCode="AGNT")
    system = sub(agent, "agentSystemSDS", classCode="DEV", determinerCode="INSTANCE")
    sub(system, "id", root=OID_ASID, extension=spine_asid)
    return control_act


def _reason(control_act: etree._Element, code: str, display: str, qualifier: str) -> None:
    reason = sub(control_act, "reason", typeCode="RSON")
    event = sub(reason, "justifyingDetectedIssueEvent", classCode="ALRT", moodCode="EVN")
    element = sub(event, "code", code=code, codeSystem=OID_SPINE_ISSUE_CODES, displayName=display)
    sub(element, "qualifier", code=qualifier)


def _total(container: etree._Element, observation: str, count: int) -> None:
    sub(sub(container, observation), "value", value=str(count))


def _access_entry(container: etree._Element, entry: SimAccess, nhs_number: str) -> None:
    query = sub(container, "pertinentCP-ISNHSQuery")
    sub(query, "effectiveTime", value=hl7_timestamp(entry.time))
    sub(query, "id", root=entry.query_id)
    author = template_slot(sub(query, "author"), "COCT_TP145102GB01.AssignedAuthor")
    sub(author, "code", code=UNKNOWN_CODE, codeSystem=OID_JOB_ROLE_NHS_DATA, displayName=entry.role)
    sub(author, "id", root=OID_SDS_USER_ID, extension=UNKNOWN_CODE)
    # The dataset names no person; say so rather than invent one.
    sub(sub(author, "assignedAuthorPerson"), "name", nullFlavor="UNK")
    organisation = sub(author, "representedOrganization")
    sub(organisation, "id", root=OID_ODS_ORGANISATION, extension=UNKNOWN_CODE)
    sub(organisation, "name", text=entry.organisation)
    sub(sub(sub(query, "queryByParameter"), "person.NHSnumber"), "value", extension=nhs_number)


def _record(record: etree._Element, data: SimRecord, nhs_number: str) -> None:
    authority = data.local_authority
    organisation = sub(sub(record, "communicationFunctionSnd"), "organisation")
    sub(organisation, "id", root=OID_ODS_ORGANISATION, extension=authority.code)
    sub(organisation, "name", text=authority.name)
    for use, phone in (("WP", authority.office_phone), ("EC", authority.emergency_phone)):
        if phone.strip():
            sub(organisation, "telecom", use=use, value=f"tel:{''.join(phone.split())}")
    cp_record = sub(record, "CP-ISRecord")
    for plan in data.plans:
        _plan(sub(cp_record, "pertinentInformation15"), plan)
    subject = sub(cp_record, "subject")
    if data.subject_kind == "child":
        child = template_slot(subject, "COCT_TP145101GB01.Child")
        sub(child, "id", root=OID_NHS_NUMBER, extension=nhs_number)
        _person(sub(child, "childPerson"), data)
    elif data.subject_kind == "unborn":
        # The unborn child's record carries the mother's details and NHS number (docs/protocol.md#p13).
        unborn = template_slot(subject, "COCT_TP145100GB01.UnbornChild")
        mother = sub(unborn, "parentMotherPerson")
        _person(mother, data)
        sub(sub(mother, "playedMother"), "id", root=OID_NHS_NUMBER, extension=nhs_number)
    else:
        raise ValueError("subject_kind must be 'child' or 'unborn'")


def _person(person: etree._Element, data: SimRecord) -> None:
    sub(person, "birthTime", value=data.birth_date.strftime("%Y%m%d"))
    name = sub(person, "name")
    sub(name, "given", text=data.given)
    sub(name, "family", text=data.family)


def _plan(slot: etree._Element, plan: SimPlan) -> None:
    template = _PLAN_TEMPLATES.get(plan.plan_type)
    if template is None:
        raise ValueError("plan_type must be CPP, LAC or UCP")
    element_name, prefix = template
    information = template_slot(slot, element_name)
    sub(sub(sub(information, "component"), f"{prefix}StartDate"), "value", value=_plan_date(plan.start))
    if plan.end is not None:
        sub(sub(sub(information, "component1"), f"{prefix}EndDate"), "value", value=_plan_date(plan.end))
    elif plan.plan_type == "UCP":
        sub(sub(sub(information, "component1"), f"{prefix}EndDate"), "value", nullFlavor=OPEN_END_NULL_FLAVOR)
    # An open CPP or LAC simply has no component1 (0..1 in the schema).


def _plan_date(day: date) -> str:
    """`TS.NHS.DateType1`: exactly 12 digits, midnight for a date."""
    return day.strftime("%Y%m%d") + "0000"
