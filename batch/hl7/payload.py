"""Reading the `CP-ISNHSQueryResponse` payload tolerantly (docs/protocol.md#p13, docs/protocol.md#p16)."""

from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from batch.hl7.namespaces import OID_NHS_NUMBER
from batch.hl7.reply_types import AccessEntry, CpRecord, LocalAuthority, Plan, WarningLog
from batch.hl7.timestamps import parse_hl7_ts
from batch.hl7.xmlnav import attr, children, elements, every, first, first_attr, is_null, local_name, text

# Plan and subject kinds by the class part of the template name: after the last "." of the element
# name, or after the "#" of npfitlc:contentId. Both are read, so either alone is enough.
_PLAN_CLASSES = {"CPPInformation": "CPP", "LACInformation": "LAC", "UCPInformation": "UCP"}
_SUBJECT_CLASSES = {"Child": "child", "UnbornChild": "unborn"}
UNKNOWN_PLAN = "UNKNOWN"


@dataclass(frozen=True)
class Payload:
    records: tuple[CpRecord, ...]
    access: tuple[AccessEntry, ...]
    total_access_records: int | None
    total_child_records: int | None


def read_payloads(payloads: list[etree._Element], warnings: WarningLog) -> Payload:
    """Every record and access entry in every container of every payload (docs/protocol.md#p16: iterate)."""
    records = tuple(
        _record(record, warnings)
        for payload in payloads
        for record in every(payload, "pertinentInformation14", "pertinentCP-ISRecordControlAct", "record")
    )
    access = tuple(
        entry
        for payload in payloads
        for query in every(payload, "pertinentInformation13", "pertinentCP-ISNHSQuery")
        if (entry := _access_entry(query)) is not None
    )
    trar = _total(payloads, "pertinentInformation11", "pertinentTotalReturnedAccessRecords", "trar", warnings)
    trcr = _total(payloads, "pertinentInformation12", "pertinentTotalReturnedChildRecords", "trcr", warnings)
    # The totals are informative: a mismatch is reported, never used to drop or invent data.
    if trar is not None and trar != len(access):
        warnings.add("trar_mismatch")
    if trcr is not None and trcr != len(records):
        warnings.add("trcr_mismatch")
    return Payload(records, access, trar, trcr)


def _total(
    payloads: list[etree._Element], container: str, observation: str, label: str, warnings: WarningLog
) -> int | None:
    values = [node for payload in payloads for node in every(payload, container, observation, "value")]
    raw = first_attr(values, "value")
    if raw is None:
        warnings.add(f"{label}_missing")
        return None
    try:
        return int(raw)
    except ValueError:
        warnings.add(f"{label}_invalid")
        return None


def _record(record: etree._Element, warnings: WarningLog) -> CpRecord:
    organisation = first(record, "communicationFunctionSnd", "organisation")
    if organisation is None:
        warnings.add("local_authority_missing")
    containers = every(record, "CP-ISRecord")
    plans = tuple(
        _plan(slot, warnings)
        for container in containers
        for slot in children(container, "pertinentInformation15")
    )
    if not plans:
        warnings.add("record_without_plan")
    subjects = [slot for container in containers for slot in children(container, "subject")]
    kind, ids = _subject(subjects, warnings)
    return CpRecord(_local_authority(organisation), plans, kind, ids)


def _local_authority(organisation: etree._Element | None) -> LocalAuthority:
    office: str | None = None
    emergency: str | None = None
    others: list[str] = []
    for telecom in every(organisation, "telecom"):
        number = _phone(attr(telecom, "value"))
        if number is None:
            continue
        uses = set((attr(telecom, "use") or "").upper().split())
        if "WP" in uses and office is None:
            office = number
        elif "EC" in uses and emergency is None:
            emergency = number
        else:
            others.append(number)
    return LocalAuthority(
        code=attr(first(organisation, "id"), "extension"),
        name=text(first(organisation, "name")),
        office_phone=office,
        emergency_phone=emergency,
        other_phones=tuple(others),
    )


def _phone(value: str | None) -> str | None:
    if value is not None and value[:4].casefold() == "tel:":
        value = value[4:].strip()
    return value or None


def _template(slot: etree._Element) -> tuple[etree._Element | None, str | None]:
    """A template slot's element and the class its npfitlc:contentId declares."""
    template = next((el for el in elements(slot) if local_name(el) != "contentId"), None)
    content_id = attr(first(slot, "contentId"), "extension")
    declared = content_id.rpartition("#")[2] if content_id else None
    return template, declared


def _classify(
    slot: etree._Element, classes: dict[str, str]
) -> tuple[etree._Element | None, str | None, bool]:
    """(template element, kind, whether name and contentId disagree); the element name wins."""
    template, declared = _template(slot)
    by_name = None if template is None else classes.get(local_name(template).rpartition(".")[2])
    by_content_id = classes.get(declared or "")
    conflict = by_name is not None and by_content_id is not None and by_name != by_content_id
    return template, by_name or by_content_id, conflict


def _plan(slot: etree._Element, warnings: WarningLog) -> Plan:
    template, plan_type, conflict = _classify(slot, _PLAN_CLASSES)
    if conflict:
        warnings.add("plan_template_mismatch")
    if plan_type is None:
        # Still a plan on a CP-IS record: reported as UNKNOWN rather than dropped.
        warnings.add("unknown_plan_template")
        plan_type = UNKNOWN_PLAN
    if template is None:
        return Plan(plan_type, None, None)
    return Plan(
        plan_type,
        _plan_date(template, "startdate", "plan_start", warnings),
        _plan_date(template, "enddate", "plan_end", warnings),
    )


def _plan_date(template: etree._Element, suffix: str, label: str, warnings: WarningLog) -> datetime | None:
    """`component/cPPStartDate/value/@value` and kin, found by name suffix so UNKNOWN plans keep dates.

    A nullFlavor or xsi:nil from the component down means "no date", i.e. an open plan. An end
    that is present but unreadable also yields None, which shows the plan as active: a doubtful
    safeguarding flag is shown rather than hidden.
    """
    holder = next((el for el in template.iter() if local_name(el).casefold().endswith(suffix)), None)
    if holder is None:
        return None
    value = first(holder, "value")
    chain = [value, holder, *holder.iterancestors()]
    for node in chain:
        if node is template:
            break
        if is_null(node):
            return None
    raw = attr(value, "value")
    if raw is None:
        warnings.add(f"{label}_missing")
        return None
    moment = parse_hl7_ts(raw)
    if moment is None:
        warnings.add(f"{label}_unreadable")
    return moment


def _subject(slots: list[etree._Element], warnings: WarningLog) -> tuple[str, tuple[str, ...]]:
    ids: dict[str, list[str]] = {"child": [], "unborn": []}
    seen: set[str] = set()
    for slot in slots:
        template, kind, conflict = _classify(slot, _SUBJECT_CLASSES)
        if conflict:
            warnings.add("subject_template_mismatch")
        if kind is None:
            warnings.add("unknown_subject_template")
            continue
        seen.add(kind)
        if kind == "child":
            nodes = every(template, "id")
        else:
            nodes = every(template, "parentMotherPerson", "playedMother", "id")
        if not nodes:
            # Allowed (docs/protocol.md#p16): the caller falls back to the attempt's NHS number.
            warnings.add(f"{kind}_id_missing")
        ids[kind].extend(
            number
            for node in nodes
            if attr(node, "root") == OID_NHS_NUMBER and (number := attr(node, "extension"))
        )
    if "child" in seen:
        if "unborn" in seen:
            warnings.add("mixed_subjects")
        return "child", tuple(dict.fromkeys(ids["child"]))
    if "unborn" in seen:
        return "unborn", tuple(dict.fromkeys(ids["unborn"]))
    warnings.add("subject_missing")
    return "child", ()


def _access_entry(query: etree._Element) -> AccessEntry | None:
    """One access-history entry; the smartcard and device author templates are both read."""
    if is_null(query) and next(elements(query), None) is None:
        return None
    author = first(query, "author")
    template = None if author is None else _template(author)[0]
    superior = every(template, "indirectAuthority", "superiorAssignedEntity")
    roles = every(template, "code") + [code for entity in superior for code in children(entity, "code")]
    names = every(template, "assignedAuthorPerson", "name") + [
        name for entity in superior for name in every(entity, "assignedPerson", "name")
    ]
    organisations = every(template, "representedOrganization", "name") + every(
        template, "maintainingOrganization", "name"
    )
    return AccessEntry(
        time=parse_hl7_ts(attr(first(query, "effectiveTime"), "value")),
        query_id=attr(first(query, "id"), "root"),
        organisation=next((name for node in organisations if (name := text(node))), None),
        role=first_attr(roles, "displayName") or first_attr(roles, "code"),
        person=next((person for node in names if (person := _person_name(node))), None),
    )


def _person_name(name: etree._Element) -> str | None:
    """prefix, given names, family, read by element name in that order whatever the document order."""
    if is_null(name):
        return None
    parts = [
        part for tag in ("prefix", "given", "family") for el in children(name, tag) if (part := text(el))
    ]
    return " ".join(parts) if parts else text(name)
