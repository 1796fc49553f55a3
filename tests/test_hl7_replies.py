"""Reply builders of the simulated Spine and the client's tolerant reply parser.

See docs/protocol.md#p13, docs/protocol.md#p14 and docs/protocol.md#p16.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from batch.hl7 import (
    DEFAULT_NOT_FOUND_CODES,
    HL7_NS,
    NPFIT_NS,
    OID_NHS_NUMBER,
    OID_OTHER_CHILD_ID,
    AppAcknowledgement,
    Issue,
    Plan,
    QueryFailed,
    QueryResponse,
    ReplyParseError,
    parse_reply,
    xmlnav,
)
from batch.ids import new_id
from batch.xmlsafe import parse_xml
from spine_sim.replies import (
    SimAccess,
    SimLocalAuthority,
    SimPlan,
    SimRecord,
    build_app_acknowledgement,
    build_query_failed,
    build_query_response,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
SCHEMAS = SHARED / "cpis-schemas" / "Schemas"

NS = {"h": HL7_NS, "n": NPFIT_NS}
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NHS_NUMBER = "9990000026"
OTHER_NHS_NUMBER = "9990000034"
CHILD_GIVEN, CHILD_FAMILY = "Alexa", "Testcase"
SPINE_ASID = "999000000001"
CLIENT_ASID = "999000000101"
NOW = datetime(2024, 7, 1, 9, 30, tzinfo=UTC)
MESSAGE_REF = new_id()
QUERY_IDS = (new_id(), new_id())

WESTMINSTER = SimLocalAuthority("E09000033", "Westminster", "020 7946 0001", "+44 7700 900001")
CAMDEN = SimLocalAuthority("E09000007", "Camden", "02079460002", "07700900002")
CPP_OPEN = SimPlan("CPP", date(2024, 1, 15), None)
LAC_ENDED = SimPlan("LAC", date(2023, 1, 1), date(2023, 6, 30))
UCP_ENDED = SimPlan("UCP", date(2024, 3, 1), date(2024, 9, 1))
CHILD_RECORD = SimRecord(
    WESTMINSTER, (CPP_OPEN, LAC_ENDED), "child", CHILD_GIVEN, CHILD_FAMILY, date(2019, 2, 3)
)
UNBORN_RECORD = SimRecord(CAMDEN, (UCP_ENDED,), "unborn", "Maria", "Testcase", date(1995, 5, 6))
ACCESS = (
    SimAccess(datetime(2024, 6, 1, 12, 5, tzinfo=UTC), "Simulated Hospital", "Consultant", QUERY_IDS[0]),
    SimAccess(datetime(2024, 1, 10, 8, 0), "Simulated Practice", "Practice Nurse", QUERY_IDS[1]),
)

REPC_PAYLOAD = "/h:REPC_IN000007GB01/h:ControlActEvent/h:subject/h:CP-ISNHSQueryResponse"
RECORD = f"{REPC_PAYLOAD}/h:pertinentInformation14/h:pertinentCP-ISRecordControlAct/h:record"


# --- helpers -----------------------------------------------------------------------------------


def repc(records: tuple[SimRecord, ...] = (CHILD_RECORD,), access: tuple[SimAccess, ...] = ACCESS) -> bytes:
    return build_query_response(
        reply_id=new_id(),
        message_ref=MESSAGE_REF,
        nhs_number=NHS_NUMBER,
        spine_asid=SPINE_ASID,
        client_asid=CLIENT_ASID,
        now=NOW,
        records=records,
        access=access,
    )


def quqi(code: str = "NHSNCC002", display: str = "No Record Found", response_code: str = "ID") -> bytes:
    return build_query_failed(
        reply_id=new_id(),
        message_ref=MESSAGE_REF,
        spine_asid=SPINE_ASID,
        client_asid=CLIENT_ASID,
        now=NOW,
        issue_code=code,
        issue_display=display,
        response_code=response_code,
    )


def mcci(ack_type: str = "AE", code: str = "5000", display: str = "Unable to process") -> bytes:
    return build_app_acknowledgement(
        reply_id=new_id(),
        message_ref=MESSAGE_REF,
        spine_asid=SPINE_ASID,
        client_asid=CLIENT_ASID,
        now=NOW,
        ack_type=ack_type,
        detail_code=code,
        detail_display=display,
    )


def tree(data: bytes) -> etree._Element:
    return parse_xml(data)


def dump(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def find(root: etree._Element, path: str) -> list[etree._Element]:
    return root.xpath(path, namespaces=NS)


def one(root: etree._Element, path: str) -> etree._Element:
    found = find(root, path)
    assert len(found) == 1, f"{path}: {len(found)} matches"
    return found[0]


def hl7(tag: str) -> str:
    return f"{{{HL7_NS}}}{tag}"


def edited(data: bytes, edit: Callable[[etree._Element], None]) -> bytes:
    root = tree(data)
    edit(root)
    return dump(root)


def response(data: bytes, **options: frozenset[str]) -> QueryResponse:
    parsed = parse_reply(data, **options)
    assert isinstance(parsed, QueryResponse)
    return parsed


def failed(data: bytes, **options: frozenset[str]) -> QueryFailed:
    parsed = parse_reply(data, **options)
    assert isinstance(parsed, QueryFailed)
    return parsed


def strip_hl7_namespace(root: etree._Element) -> etree._Element:
    """The same document with HL7 elements in no namespace (npfitlc kept), as the NHS test kit sends."""
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith(f"{{{HL7_NS}}}"):
            element.tag = etree.QName(element).localname
    etree.cleanup_namespaces(root)
    return root


def wrap(root: etree._Element, namespace: str | None) -> etree._Element:
    tag = "CP-ISNHSQueryResponse" if namespace is None else f"{{{namespace}}}CP-ISNHSQueryResponse"
    wrapper = etree.Element(tag, nsmap={"npfitlc": NPFIT_NS})
    wrapper.append(root)
    return wrapper


def _schema(name: str) -> xmlschema.XMLSchema10:
    path = SCHEMAS / name
    if not path.is_file():
        pytest.skip(f"CP-IS schemas not found at {SCHEMAS} (expected ../shared beside the checkout)")
    return xmlschema.XMLSchema10(str(path), validation="lax")


@pytest.fixture(scope="session")
def repc_schema() -> xmlschema.XMLSchema10:
    return _schema("REPC_IN000007GB01.xsd")


@pytest.fixture(scope="session")
def quqi_schema() -> xmlschema.XMLSchema10:
    return _schema("QUQI_IN010000UK14.xsd")


@pytest.fixture(scope="session")
def mcci_schema() -> xmlschema.XMLSchema10:
    return _schema("MCCI_IN010000UK13.xsd")


def schema_errors(schema: xmlschema.XMLSchema10, data: bytes) -> list[str]:
    return [f"{error.reason} @ {error.path}" for error in schema.iter_errors(tree(data))]


# --- builders validate against the XSDs --------------------------------------------------------


def test_repc_validates(repc_schema: xmlschema.XMLSchema10) -> None:
    # Lax loading records build errors for this schema set (cpis-schemas README); instances still validate.
    assert all("restriction" in str(error) for error in repc_schema.all_errors)
    assert schema_errors(repc_schema, repc(records=(CHILD_RECORD, UNBORN_RECORD))) == []


def test_repc_without_access_history_validates(repc_schema: xmlschema.XMLSchema10) -> None:
    assert schema_errors(repc_schema, repc(access=())) == []


def test_quqi_validates(quqi_schema: xmlschema.XMLSchema10) -> None:
    assert quqi_schema.all_errors == []
    assert schema_errors(quqi_schema, quqi()) == []
    assert schema_errors(quqi_schema, quqi(code="XYZ", display="Other", response_code="NF")) == []


@pytest.mark.parametrize("ack_type", ["AA", "AE", "AR"])
def test_mcci_validates(mcci_schema: xmlschema.XMLSchema10, ack_type: str) -> None:
    assert mcci_schema.all_errors == []
    assert schema_errors(mcci_schema, mcci(ack_type)) == []


def test_schema_catches_a_broken_reply_so_validation_is_real(quqi_schema: xmlschema.XMLSchema10) -> None:
    broken = edited(quqi(), lambda root: one(root, "h:acknowledgement").remove(one(root, "//h:messageRef")))
    assert schema_errors(quqi_schema, broken)


def test_open_ucp_deviates_from_the_xsd_only_at_its_end_date(repc_schema: xmlschema.XMLSchema10) -> None:
    open_ucp = SimRecord(
        CAMDEN, (SimPlan("UCP", date(2024, 3, 1), None),), "unborn", "Maria", "Testcase", date(1995, 5, 6)
    )
    errors = schema_errors(repc_schema, repc(records=(open_ucp,)))
    assert errors
    assert all(error.endswith("UCPInformation/component1/uCPEndDate/value") for error in errors)


def test_open_ucp_reads_as_no_end() -> None:
    open_ucp = SimRecord(
        CAMDEN, (SimPlan("UCP", date(2024, 3, 1), None),), "unborn", "Maria", "Testcase", date(1995, 5, 6)
    )
    data = repc(records=(open_ucp,))
    assert one(tree(data), "//h:uCPEndDate/h:value").get("nullFlavor") == "NA"
    (plan,) = response(data).records[0].plans
    assert plan == Plan("UCP", datetime(2024, 3, 1), None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: repc(records=()), "at least one record"),
        (
            lambda: repc(
                records=(
                    SimRecord(
                        CAMDEN, (SimPlan("XYZ", date(2024, 1, 1), None),), "child", "A", "B", date(2020, 1, 1)
                    ),
                )
            ),
            "plan_type",
        ),
        (
            lambda: repc(records=(SimRecord(CAMDEN, (CPP_OPEN,), "adult", "A", "B", date(2020, 1, 1)),)),
            "subject_kind",
        ),
        (lambda: mcci("XX"), "ack_type"),
    ],
)
def test_builders_refuse_impossible_replies(call: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_repc_wrapper_and_payload_shape() -> None:
    root = tree(repc())
    assert root.tag == hl7("REPC_IN000007GB01")
    assert one(root, "h:versionCode").get("code") == "v3INF_DMSv5.7:FIN"
    assert find(root, "h:acknowledgement") == []
    assert one(root, "h:communicationFunctionRcv/h:device/h:id").get("extension") == CLIENT_ASID
    assert one(root, "h:communicationFunctionSnd/h:device/h:id").get("extension") == SPINE_ASID
    assert one(root, "h:ControlActEvent/h:author1//h:id").get("extension") == SPINE_ASID
    assert one(root, "h:ControlActEvent/h:queryAck/h:queryResponseCode").get("code") == "OK"
    assert (
        one(root, f"{RECORD}/h:CP-ISRecord/h:subject/n:contentId").get("extension")
        == "COCT_TP145101GB01#Child"
    )
    plans = find(root, f"{RECORD}/h:CP-ISRecord/h:pertinentInformation15/*[2]")
    assert [etree.QName(plan).localname for plan in plans] == [
        "COCT_TP146105GB01.CPPInformation",
        "COCT_TP146103GB01.LACInformation",
    ]
    # Open CPP: no component1 at all. Ended LAC: a 12-digit end date.
    assert find(plans[0], "h:component1") == []
    assert one(plans[1], "h:component1/h:lACEndDate/h:value").get("value") == "202306300000"
    assert one(plans[0], "h:component/h:cPPStartDate/h:value").get("value") == "202401150000"


def test_quqi_and_mcci_carry_our_message_id_as_message_ref() -> None:
    for data in (quqi(), mcci()):
        root = tree(data)
        assert one(root, "h:acknowledgement/h:messageRef/h:id").get("root") == MESSAGE_REF
        assert one(root, "h:communicationFunctionRcv/h:device/h:id").get("extension") == CLIENT_ASID
    assert find(tree(mcci()), "//h:queryAck") == []


# --- round trips -------------------------------------------------------------------------------


def test_repc_round_trip() -> None:
    parsed = response(repc(records=(CHILD_RECORD, UNBORN_RECORD)))
    assert parsed.response_code == "OK"
    assert parsed.warnings == ()
    assert parsed.issues == ()
    assert parsed.total_child_records == 2
    assert parsed.total_access_records == 2
    child, unborn = parsed.records
    assert child.local_authority.code == "E09000033"
    assert child.local_authority.name == "Westminster"
    assert child.local_authority.office_phone == "02079460001"
    assert child.local_authority.emergency_phone == "+447700900001"
    assert child.local_authority.other_phones == ()
    assert child.plans == (
        Plan("CPP", datetime(2024, 1, 15), None),
        Plan("LAC", datetime(2023, 1, 1), datetime(2023, 6, 30)),
    )
    assert (child.subject_kind, child.subject_ids) == ("child", (NHS_NUMBER,))
    assert unborn.plans == (Plan("UCP", datetime(2024, 3, 1), datetime(2024, 9, 1)),)
    assert (unborn.subject_kind, unborn.subject_ids) == ("unborn", (NHS_NUMBER,))
    assert [plan.plan_type for _, plan in parsed.plans] == ["CPP", "LAC", "UCP"]
    assert [record for record, _ in parsed.plans] == [child, child, unborn]


def test_repc_access_history_round_trip() -> None:
    first, second = response(repc()).access
    # Aware UTC 12:05 is 13:05 in London; a naive simulator time is already UK local time.
    assert first.time == datetime(2024, 6, 1, 13, 5)
    assert (first.query_id, first.organisation, first.role) == (
        QUERY_IDS[0],
        "Simulated Hospital",
        "Consultant",
    )
    assert first.person is None  # the simulator names nobody
    assert second.time == datetime(2024, 1, 10, 8, 0)
    assert (second.query_id, second.organisation, second.role) == (
        QUERY_IDS[1],
        "Simulated Practice",
        "Practice Nurse",
    )


def test_repc_names_the_query_it_answers_when_it_says() -> None:
    def with_ref(root: etree._Element) -> None:
        ack = etree.SubElement(root, hl7("acknowledgement"), typeCode="AA")
        etree.SubElement(etree.SubElement(ack, hl7("messageRef")), hl7("id"), root=MESSAGE_REF)

    parsed = response(edited(repc(), with_ref))
    assert (parsed.message_ref, parsed.warnings) == (MESSAGE_REF, ())
    # The simulator's REPC leaves it out, as a REPC may: correlation has RefToMessageId. No warning.
    assert (response(repc()).message_ref, response(repc()).warnings) == (None, ())


def test_a_reply_in_a_foreign_namespace_is_read_with_a_warning() -> None:
    def foreign(root: etree._Element) -> None:
        for element in root.iter():
            if isinstance(element.tag, str) and element.tag.startswith(f"{{{HL7_NS}}}"):
                element.tag = "{urn:example:other}" + element.tag.split("}", 1)[1]

    parsed = response(edited(repc(), foreign))
    assert parsed.warnings == ("foreign_namespace",)
    assert parsed.records == response(repc()).records


def test_a_misplaced_payload_is_still_read() -> None:
    def misplace(root: etree._Element) -> None:
        payload = one(root, REPC_PAYLOAD)
        payload.getparent().remove(payload)
        root.append(payload)

    parsed = response(edited(repc(), misplace))
    assert parsed.warnings == ("payload_misplaced",)
    assert parsed.records == response(repc()).records
    assert parsed.access == response(repc()).access


def test_repc_message_id_is_the_reply_id() -> None:
    data = repc()
    assert response(data).message_id == one(tree(data), "h:id").get("root")


def test_quqi_round_trip() -> None:
    parsed = failed(quqi())
    assert parsed.message_ref == MESSAGE_REF
    assert parsed.ack_type == "AE"
    assert parsed.response_code == "ID"
    assert parsed.not_found is True
    assert parsed.warnings == ()
    (issue,) = parsed.issues
    assert (issue.code, issue.code_system, issue.display_name, issue.qualifier) == (
        "NHSNCC002",
        "2.16.840.1.113883.2.1.3.2.4.17.42",
        "No Record Found",
        "ER",
    )


@pytest.mark.parametrize(("ack_type", "qualifier"), [("AA", "IF"), ("AE", "ER"), ("AR", "ER")])
def test_mcci_round_trip(ack_type: str, qualifier: str) -> None:
    parsed = parse_reply(mcci(ack_type, "5000", "Unable to process"))
    assert isinstance(parsed, AppAcknowledgement)
    assert parsed.ack_type == ack_type
    assert parsed.message_ref == MESSAGE_REF
    assert [(d.code, d.display_name, d.qualifier) for d in parsed.details] == [
        ("5000", "Unable to process", qualifier)
    ]
    assert [(i.code, i.qualifier) for i in parsed.issues] == [("5000", qualifier)]
    assert parsed.warnings == ()


_R = "A1B2C3D4-E5F6-4A7B-8C9D-0E1F2A3B4C5D"
_M = "6C7F3F5B-0E0A-4D9B-9C7A-2B8F1D3E4A51"


def test_an_mcci_is_read_into_the_whole_record() -> None:
    data = (
        f'<MCCI_IN010000UK13 xmlns="urn:hl7-org:v3"><id root="{_R}"/>'
        '<interactionId root="2.16.840.1.113883.2.1.3.2.4.12" extension="MCCI_IN010000UK13"/>'
        '<acknowledgement typeCode=" AE ">'
        '<acknowledgementDetail typeCode="ER"><code code="5000" codeSystem="2.16.840.1.113883.2.1.3.2.4.17.42"'
        ' displayName="Unable to process"/><code code="5001"/></acknowledgementDetail>'
        '<acknowledgementDetail typeCode="WG"><code code="6000" codeSystem="cs" displayName="Careful"/>'
        "</acknowledgementDetail>"
        f'<messageRef><id root="{_M}"/></messageRef></acknowledgement>'
        "<ControlActEvent><reason><justifyingDetectedIssueEvent>"
        '<code code="7000" codeSystem="cs2" displayName="Issue"><qualifier code="IF"/></code>'
        "</justifyingDetectedIssueEvent></reason></ControlActEvent></MCCI_IN010000UK13>"
    ).encode()
    assert parse_reply(data) == AppAcknowledgement(
        message_id=_R,
        message_ref=_M,
        ack_type="AE",
        details=(
            Issue("5000", "2.16.840.1.113883.2.1.3.2.4.17.42", "Unable to process", "ER"),
            Issue("5001", None, None, "ER"),
            Issue("6000", "cs", "Careful", "WG"),
        ),
        issues=(Issue("7000", "cs2", "Issue", "IF"),),
        warnings=(),
    )


def test_an_mcci_without_ids_says_so() -> None:
    data = b'<MCCI_IN010000UK13 xmlns="urn:hl7-org:v3"><acknowledgement typeCode="AA"/></MCCI_IN010000UK13>'
    assert parse_reply(data) == AppAcknowledgement(
        message_id=None,
        message_ref=None,
        ack_type="AA",
        details=(),
        issues=(),
        warnings=("message_id_missing", "message_ref_missing"),
    )


def test_a_quqi_is_read_into_the_whole_record() -> None:
    data = (
        f'<QUQI_IN010000UK14 xmlns="urn:hl7-org:v3"><id root="{_R}"/>'
        f'<acknowledgement typeCode="AE"><messageRef><id root="{_M}"/></messageRef></acknowledgement>'
        '<ControlActEvent><reason><justifyingDetectedIssueEvent><code code="SIMQE01" codeSystem="cs"'
        ' displayName="Broken"><qualifier code="ER"/></code></justifyingDetectedIssueEvent></reason>'
        '<queryAck><queryResponseCode code="AE"/></queryAck></ControlActEvent></QUQI_IN010000UK14>'
    ).encode()
    assert parse_reply(data) == QueryFailed(
        message_id=_R,
        message_ref=_M,
        ack_type="AE",
        response_code="AE",
        issues=(Issue("SIMQE01", "cs", "Broken", "ER"),),
        not_found=False,
        warnings=(),
    )
    bare = b"<QUQI_IN010000UK14/>"
    assert parse_reply(bare) == QueryFailed(
        message_id=None,
        message_ref=None,
        ack_type=None,
        response_code=None,
        issues=(),
        not_found=False,
        warnings=("no_hl7_namespace", "message_id_missing", "message_ref_missing"),
    )


# --- tolerant parsing: one test per row of docs/protocol.md#p16 --------------------------------


def test_several_queries_in_one_access_container_are_all_read() -> None:
    def crowd(root: etree._Element) -> None:
        first_container, second_container = find(root, f"{REPC_PAYLOAD}/h:pertinentInformation13")
        first_container.append(second_container[0])  # two queries in one container (XSD: one)
        second_container.getparent().remove(second_container)

    parsed = response(edited(repc(), crowd))
    assert [entry.query_id for entry in parsed.access] == list(QUERY_IDS)
    assert "trar_mismatch" not in parsed.warnings


def test_access_entries_across_several_containers_are_all_read() -> None:
    def extra(root: etree._Element) -> None:
        first_container = find(root, f"{REPC_PAYLOAD}/h:pertinentInformation13")[0]
        doubled = copy.deepcopy(first_container)
        doubled.append(copy.deepcopy(doubled[0]))
        first_container.addnext(doubled)

    parsed = response(edited(repc(), extra))
    assert [entry.query_id for entry in parsed.access] == [
        QUERY_IDS[0],
        QUERY_IDS[0],
        QUERY_IDS[0],
        QUERY_IDS[1],
    ]


def test_names_with_family_before_given_are_read_by_name() -> None:
    def reorder(root: etree._Element) -> None:
        child_name = one(root, "//h:childPerson/h:name")
        child_name.insert(0, child_name[1])  # family first
        author_name = find(root, "//h:assignedAuthorPerson/h:name")[0]
        del author_name.attrib["nullFlavor"]
        for tag, text in (("family", "Smith"), ("given", "Jane"), ("prefix", "Dr")):
            etree.SubElement(author_name, hl7(tag)).text = text

    parsed = response(edited(repc(), reorder))
    assert parsed.records[0].subject_ids == (NHS_NUMBER,)
    assert parsed.access[0].person == "Dr Jane Smith"
    assert parsed.warnings == ()


def test_child_without_id_is_allowed() -> None:
    def drop_id(root: etree._Element) -> None:
        child = one(root, "//h:COCT_TP145101GB01.Child")
        child.remove(one(child, "h:id"))

    parsed = response(edited(repc(), drop_id))
    (record,) = parsed.records
    assert record.subject_kind == "child"
    assert record.subject_ids == ()  # the caller falls back to the attempt's NHS number
    assert len(record.plans) == 2
    assert "child_id_missing" in parsed.warnings


def test_lower_case_local_authority_code_is_kept_raw() -> None:
    lower = SimLocalAuthority("rfx", "Lower Case Council", "0123", "0456")
    record = SimRecord(lower, (CPP_OPEN,), "child", CHILD_GIVEN, CHILD_FAMILY, date(2019, 2, 3))
    assert response(repc(records=(record,))).records[0].local_authority.code == "rfx"


def test_birth_time_of_8_digits_is_accepted() -> None:
    data = repc()
    assert one(tree(data), "//h:childPerson/h:birthTime").get("value") == "20190203"
    parsed = response(data)
    assert parsed.warnings == ()
    assert parsed.records[0].subject_ids == (NHS_NUMBER,)


def test_times_with_plus_0000_offset_are_read() -> None:
    def offsets(root: etree._Element) -> None:
        find(root, "//h:pertinentCP-ISNHSQuery/h:effectiveTime")[0].set("value", "20240601130500+0000")
        one(root, "//h:cPPStartDate/h:value").set("value", "202401150000+0000")
        one(root, "//h:lACEndDate/h:value").set("value", "20230630")

    parsed = response(edited(repc(), offsets))
    assert parsed.access[0].time == datetime(2024, 6, 1, 13, 5)
    assert parsed.records[0].plans == (
        Plan("CPP", datetime(2024, 1, 15), None),
        Plan("LAC", datetime(2023, 1, 1), datetime(2023, 6, 30)),
    )
    assert parsed.warnings == ()


def test_totals_that_disagree_only_warn() -> None:
    def miscount(root: etree._Element) -> None:
        one(root, "//h:pertinentTotalReturnedAccessRecords/h:value").set("value", "10")
        one(root, "//h:pertinentTotalReturnedChildRecords/h:value").set("value", "3")

    parsed = response(edited(repc(), miscount))
    assert parsed.total_access_records == 10
    assert parsed.total_child_records == 3
    assert len(parsed.access) == 2
    assert len(parsed.records) == 1
    assert set(parsed.warnings) == {"trar_mismatch", "trcr_mismatch"}


def test_unreadable_totals_are_none_with_a_warning() -> None:
    def garble(root: etree._Element) -> None:
        one(root, "//h:pertinentTotalReturnedAccessRecords/h:value").set("value", "many")
        holder = one(root, f"{REPC_PAYLOAD}/h:pertinentInformation12")
        holder.getparent().remove(holder)

    parsed = response(edited(repc(), garble))
    assert (parsed.total_access_records, parsed.total_child_records) == (None, None)
    assert {"trar_invalid", "trcr_missing"} <= set(parsed.warnings)


def test_extra_attributes_and_unknown_elements_are_ignored() -> None:
    baseline = response(repc())

    def decorate(root: etree._Element) -> None:
        one(root, "h:ControlActEvent/h:queryAck").set("type", "QueryAck")
        for element in list(root.iter()):
            element.set("extraAttribute", "x")
            etree.SubElement(element, hl7("unknownElement")).text = "ignored"
        root.insert(0, etree.Element("{urn:example:other}foreign"))

    parsed = response(edited(repc(), decorate))
    assert parsed.records == baseline.records
    assert parsed.access == baseline.access
    assert (parsed.total_access_records, parsed.total_child_records) == (2, 1)
    assert parsed.response_code == "OK"
    assert parsed.warnings == ()


@pytest.mark.parametrize(
    ("strip", "wrapper", "expected"),
    [
        (True, None, {"no_hl7_namespace", "wrapped_interaction"}),  # the NHS synchronous test kit
        (True, "skip", {"no_hl7_namespace"}),
        (False, HL7_NS, {"wrapped_interaction"}),
        (False, None, {"wrapped_interaction"}),
    ],
)
def test_interaction_found_by_local_name(strip: bool, wrapper: str | None, expected: set[str]) -> None:
    for data, kind in ((repc(), QueryResponse), (quqi(), QueryFailed), (mcci(), AppAcknowledgement)):
        root = tree(data)
        if strip:
            root = strip_hl7_namespace(root)
        if wrapper != "skip":
            root = wrap(root, wrapper)
        parsed = parse_reply(dump(root))
        assert isinstance(parsed, kind)
        assert set(parsed.warnings) == expected
        assert parsed.message_id is not None
    parsed_repc = response(dump(wrap(strip_hl7_namespace(tree(repc())), None)))
    assert parsed_repc.records[0].plans[0] == Plan("CPP", datetime(2024, 1, 15), None)
    assert parsed_repc.access[0].query_id == QUERY_IDS[0]
    assert failed(dump(wrap(strip_hl7_namespace(tree(quqi())), None))).not_found is True


def test_schema_invalid_reply_is_still_read() -> None:
    def deviate(root: etree._Element) -> None:
        one(root, "h:id").set("root", new_id().lower())
        payload = one(root, REPC_PAYLOAD)
        payload.remove(one(payload, "h:effectiveTime"))
        cp_record = one(root, f"{RECORD}/h:CP-ISRecord")
        for _ in range(2):  # four plans (XSD: 1..3)
            cp_record.insert(0, copy.deepcopy(cp_record[0]))

    parsed = response(edited(repc(), deviate))
    assert [plan.plan_type for plan in parsed.records[0].plans] == ["CPP", "CPP", "CPP", "LAC"]


def test_that_deviating_reply_is_indeed_schema_invalid(repc_schema: xmlschema.XMLSchema10) -> None:
    def lowercase_id(root: etree._Element) -> None:
        one(root, "h:id").set("root", new_id().lower())

    assert schema_errors(repc_schema, edited(repc(), lowercase_id))
    assert isinstance(parse_reply(edited(repc(), lowercase_id)), QueryResponse)


# --- not-found rules (docs/protocol.md#p14) ----------------------------------------------------


def test_nf_response_code_means_not_found() -> None:
    assert failed(quqi(code="XYZ001", display="Something else", response_code="NF")).not_found is True


@pytest.mark.parametrize(
    "display", ["No record found", "NO RECORDS FOUND", "nhs number not found", "Not Found"]
)
def test_not_found_display_text_in_any_case(display: str) -> None:
    assert failed(quqi(code="XYZ001", display=display)).not_found is True


def test_default_not_found_code() -> None:
    assert DEFAULT_NOT_FOUND_CODES == frozenset({"NHSNCC002"})
    assert failed(quqi(code="NHSNCC002", display="Query could not be completed")).not_found is True


def test_configured_not_found_code() -> None:
    data = quqi(code="XYZ123", display="Query could not be completed")
    assert failed(data).not_found is False
    assert failed(data, not_found_codes=frozenset({"XYZ123"})).not_found is True
    # A configured set replaces the default one.
    assert (
        failed(quqi(code="NHSNCC002", display="x"), not_found_codes=frozenset({"XYZ123"})).not_found is False
    )


def test_other_issue_is_an_error_with_its_codes() -> None:
    parsed = failed(quqi(code="NHSERR010", display="Invalid NHS number format"))
    assert parsed.not_found is False
    assert [issue.code for issue in parsed.issues] == ["NHSERR010"]


def test_every_issue_is_read() -> None:
    def second_reason(root: etree._Element) -> None:
        reason = one(root, "h:ControlActEvent/h:reason")
        extra = copy.deepcopy(reason)
        one(extra, ".//h:code").set("code", "1")
        reason.addnext(extra)

    parsed = failed(edited(quqi(), second_reason))
    assert [issue.code for issue in parsed.issues] == ["NHSNCC002", "1"]


def test_repc_with_issues_keeps_them() -> None:
    def issue_detected(root: etree._Element) -> None:
        reason = etree.fromstring(quqi())
        control_act = one(root, "h:ControlActEvent")
        one(control_act, "h:author1").addnext(one(reason, "h:ControlActEvent/h:reason"))
        one(control_act, "h:queryAck/h:queryResponseCode").set("code", "ID")

    parsed = response(edited(repc(), issue_detected))
    assert parsed.response_code == "ID"
    assert [issue.code for issue in parsed.issues] == ["NHSNCC002"]
    assert len(parsed.records) == 1


# --- plans, dates, phones, subjects ------------------------------------------------------------


def test_unknown_plan_template_is_unknown_and_keeps_dates() -> None:
    def rename(root: etree._Element) -> None:
        plan = one(root, "//h:COCT_TP146105GB01.CPPInformation")
        plan.tag = hl7("COCT_TP146199GB01.NewPlanInformation")
        plan.getprevious().set("extension", "COCT_TP146199GB01#NewPlanInformation")
        one(plan, "h:component/h:cPPStartDate").tag = hl7("newStartDate")

    parsed = response(edited(repc(), rename))
    assert parsed.records[0].plans[0] == Plan("UNKNOWN", datetime(2024, 1, 15), None)
    assert "unknown_plan_template" in parsed.warnings


def test_plan_type_from_content_id_when_the_element_is_unrecognised() -> None:
    def rename(root: etree._Element) -> None:
        one(root, "//h:COCT_TP146105GB01.CPPInformation").tag = hl7("SomethingElse")

    parsed = response(edited(repc(), rename))
    assert parsed.records[0].plans[0].plan_type == "CPP"
    assert "unknown_plan_template" not in parsed.warnings


def test_plan_element_name_wins_over_a_contradicting_content_id() -> None:
    def contradict(root: etree._Element) -> None:
        one(root, "//h:COCT_TP146105GB01.CPPInformation").getprevious().set(
            "extension", "COCT_TP146103GB01#LACInformation"
        )

    parsed = response(edited(repc(), contradict))
    assert parsed.records[0].plans[0].plan_type == "CPP"
    assert "plan_template_mismatch" in parsed.warnings


@pytest.mark.parametrize(
    "nullify",
    [
        lambda end: end.set("nullFlavor", "NI"),
        lambda end: end.getparent().set("nullFlavor", "NA"),
        lambda end: end.getparent().set(f"{{{XSI}}}nil", "true"),
        lambda end: one(end, "h:value").set("nullFlavor", "UNK"),
    ],
    ids=["end-element", "component1", "xsi-nil", "value"],
)
def test_null_flavoured_end_date_means_no_end(nullify: Callable[[etree._Element], None]) -> None:
    def edit(root: etree._Element) -> None:
        end = one(root, "//h:lACEndDate")
        nullify(end)
        value = one(end, "h:value")
        if value.get("nullFlavor") is not None:
            del value.attrib["value"]

    parsed = response(edited(repc(), edit))
    assert parsed.records[0].plans[1] == Plan("LAC", datetime(2023, 1, 1), None)
    assert not any(warning.startswith("plan_end") for warning in parsed.warnings)


def test_unreadable_end_date_shows_the_plan_as_active_and_warns() -> None:
    parsed = response(
        edited(repc(), lambda root: one(root, "//h:lACEndDate/h:value").set("value", "20231399"))
    )
    assert parsed.records[0].plans[1].end is None
    assert "plan_end_unreadable" in parsed.warnings


def test_phones() -> None:
    def phones(root: etree._Element) -> None:
        organisation = one(root, f"{RECORD}/h:communicationFunctionSnd/h:organisation")
        for telecom in find(organisation, "h:telecom"):
            organisation.remove(telecom)
        for use, value in (
            ("EC", "TEL:0800111"),
            ("H", "tel:0800222"),
            (None, "tel:+44800333"),
            ("WP", "01234 5"),
        ):
            telecom = etree.SubElement(organisation, hl7("telecom"), value=value)
            if use is not None:
                telecom.set("use", use)
        etree.SubElement(organisation, hl7("telecom"), use="WP", value="tel:")  # empty: skipped

    authority = response(edited(repc(), phones)).records[0].local_authority
    assert authority.office_phone == "01234 5"
    assert authority.emergency_phone == "0800111"
    assert authority.other_phones == ("0800222", "+44800333")


@pytest.mark.parametrize(
    ("telecoms", "office", "emergency", "others"),
    [
        # A number of another use, listed first, must not become the emergency number.
        ([("H", "tel:01"), ("EC", "tel:02"), ("WP", "tel:03")], "03", "02", ("01",)),
        ([(None, "tel:01"), ("WP", "tel:02"), ("EC", "tel:03")], "02", "03", ("01",)),
        ([("EC", "tel:01"), ("EC", "tel:02"), ("WP", "tel:03")], "03", "01", ("02",)),
        ([("wp ec", "tel:01"), ("ec", "tel:02")], "01", "02", ()),  # uses are a list, in any case
        ([("EC", " tel: 01 "), ("WP", "TEL:")], None, "01", ()),
        ([("MC", "tel:01")], None, None, ("01",)),
        ([], None, None, ()),
    ],
)
def test_each_phone_goes_to_its_use(
    telecoms: list[tuple[str | None, str]], office: str | None, emergency: str | None, others: tuple[str, ...]
) -> None:
    def phones(root: etree._Element) -> None:
        organisation = one(root, f"{RECORD}/h:communicationFunctionSnd/h:organisation")
        for telecom in find(organisation, "h:telecom"):
            organisation.remove(telecom)
        for use, value in telecoms:
            telecom = etree.SubElement(organisation, hl7("telecom"), value=value)
            if use is not None:
                telecom.set("use", use)

    authority = response(edited(repc(), phones)).records[0].local_authority
    assert (authority.office_phone, authority.emergency_phone, authority.other_phones) == (
        office,
        emergency,
        others,
    )


def test_second_office_phone_goes_to_other_phones() -> None:
    def double(root: etree._Element) -> None:
        organisation = one(root, f"{RECORD}/h:communicationFunctionSnd/h:organisation")
        etree.SubElement(organisation, hl7("telecom"), use="WP", value="tel:0999")

    authority = response(edited(repc(), double)).records[0].local_authority
    assert (authority.office_phone, authority.other_phones) == ("02079460001", ("0999",))


def test_ucp_subject_uses_the_mothers_nhs_number_ids() -> None:
    def ids(root: etree._Element) -> None:
        mother = one(root, "//h:parentMotherPerson/h:playedMother")
        etree.SubElement(mother, hl7("id"), root=OID_OTHER_CHILD_ID, extension="LOCAL-42")
        etree.SubElement(mother, hl7("id"), root=OID_NHS_NUMBER, extension=OTHER_NHS_NUMBER)

    (record,) = response(edited(repc(records=(UNBORN_RECORD,)), ids)).records
    assert record.subject_kind == "unborn"
    assert record.subject_ids == (NHS_NUMBER, OTHER_NHS_NUMBER)
    assert record.plans[0].plan_type == "UCP"


def test_child_ids_other_than_nhs_numbers_are_left_out() -> None:
    def other_id(root: etree._Element) -> None:
        one(root, "//h:COCT_TP145101GB01.Child/h:id").set("root", OID_OTHER_CHILD_ID)

    assert response(edited(repc(), other_id)).records[0].subject_ids == ()


def test_access_entry_with_the_device_author_template() -> None:
    def device(root: etree._Element) -> None:
        author = find(root, "//h:pertinentCP-ISNHSQuery/h:author")[0]
        for child in list(author):
            author.remove(child)
        content_id = etree.SubElement(
            author, f"{{{NPFIT_NS}}}contentId", root="x", extension="COCT_TP145104GB01#System"
        )
        del content_id.attrib["root"]
        system = etree.SubElement(author, hl7("COCT_TP145104GB01.System"))
        entity = etree.SubElement(
            etree.SubElement(system, hl7("indirectAuthority")), hl7("superiorAssignedEntity")
        )
        etree.SubElement(entity, hl7("code"), code="R0260", displayName="GP")
        name = etree.SubElement(etree.SubElement(entity, hl7("assignedPerson")), hl7("name"))
        etree.SubElement(name, hl7("given")).text = "Jane"
        etree.SubElement(name, hl7("family")).text = "Smith"
        organisation = etree.SubElement(system, hl7("maintainingOrganization"))
        etree.SubElement(organisation, hl7("name")).text = "Simulated Test Trust"

    entry = response(edited(repc(), device)).access[0]
    assert (entry.organisation, entry.role, entry.person) == ("Simulated Test Trust", "GP", "Jane Smith")


def test_plan_active_on() -> None:
    plan = Plan("CPP", datetime(2024, 1, 15), datetime(2024, 6, 30))
    assert not plan.active_on(date(2024, 1, 14))
    assert plan.active_on(date(2024, 1, 15))
    assert plan.active_on(date(2024, 6, 30))
    assert not plan.active_on(date(2024, 7, 1))
    assert Plan("LAC", None, None).active_on(date(1990, 1, 1))
    assert Plan("UCP", datetime(2024, 1, 15, 23, 59), None).active_on(date(2024, 1, 15))


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml at all",
        b"<REPC_IN000007GB01>",
        b'<!DOCTYPE REPC_IN000007GB01 [<!ENTITY x "y">]><REPC_IN000007GB01 xmlns="urn:hl7-org:v3"/>',
        b'<!DOCTYPE REPC_IN000007GB01 SYSTEM "http://example.invalid/x.dtd"><REPC_IN000007GB01/>',
    ],
    ids=["empty", "text", "unclosed", "doctype-entity", "doctype-external"],
)
def test_non_xml_and_doctype_are_refused(data: bytes) -> None:
    with pytest.raises(ReplyParseError, match=r"^(not well-formed XML: .+|XML with a DOCTYPE is refused)$"):
        parse_reply(data)


@pytest.mark.parametrize(
    "data",
    [
        b"<QUPC_IN000006GB01 xmlns='urn:hl7-org:v3'/>",
        b"<Envelope><Body/></Envelope>",
        b"<REPC_IN000008GB01/>",
    ],
)
def test_unknown_or_missing_interaction_is_refused(data: bytes) -> None:
    message = r"^no REPC_IN000007GB01, QUQI_IN010000UK14 or MCCI_IN010000UK13 element$"
    with pytest.raises(ReplyParseError, match=message):
        parse_reply(data)


def test_minimal_documents_do_not_raise() -> None:
    parsed = parse_reply(b"<REPC_IN000007GB01/>")
    assert isinstance(parsed, QueryResponse)
    assert parsed.records == ()
    assert {"no_hl7_namespace", "no_payload", "message_id_missing"} <= set(parsed.warnings)
    quqi_parsed = parse_reply(b"<QUQI_IN010000UK14/>")
    assert isinstance(quqi_parsed, QueryFailed)
    assert quqi_parsed.not_found is False
    assert "message_ref_missing" in quqi_parsed.warnings


def test_interaction_id_that_contradicts_the_element_warns() -> None:
    data = edited(quqi(), lambda root: one(root, "h:interactionId").set("extension", "MCCI_IN010000UK13"))
    assert "interaction_id_mismatch" in failed(data).warnings


def test_warnings_carry_no_patient_data() -> None:
    def mangle(root: etree._Element) -> None:
        one(root, "//h:pertinentTotalReturnedChildRecords/h:value").set("value", NHS_NUMBER)
        one(root, "//h:lACEndDate/h:value").set("value", CHILD_FAMILY)
        child = one(root, "//h:COCT_TP145101GB01.Child")
        child.remove(one(child, "h:id"))

    parsed = response(dump(wrap(strip_hl7_namespace(tree(edited(repc(), mangle))), None)))
    assert len(parsed.warnings) >= 4
    for warning in parsed.warnings:
        assert NHS_NUMBER not in warning and CHILD_FAMILY not in warning and CHILD_GIVEN not in warning
        assert warning.replace("_", "").isalnum()


_ELEMENT_COUNT = sum(1 for _ in tree(repc(records=(CHILD_RECORD, UNBORN_RECORD))).iter())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=_ELEMENT_COUNT - 1), max_size=8))
def test_deleting_any_elements_never_breaks_the_parser(positions: list[int]) -> None:
    root = tree(repc(records=(CHILD_RECORD, UNBORN_RECORD)))
    for position in positions:
        elements = list(root.iter())
        if position < len(elements):
            victim = elements[position]
            victim.getparent().remove(victim)
    assert isinstance(parse_reply(dump(root)), QueryResponse)


@settings(max_examples=100)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_reply_parse_error(data: bytes) -> None:
    try:
        parse_reply(data)
    except ReplyParseError:
        pass


# --- the navigation helpers the readers are built on (batch.hl7.xmlnav) ---------------------------------


def _xml(text: str) -> etree._Element:
    return etree.fromstring(text)


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<name>  Jane \n Smith </name>", "Jane Smith"),
        # Own text wins; text of child elements is left out...
        ("<name>Jane <b>x</b> Q <c>y</c> Smith</name>", "Jane Q Smith"),
        # ...unless the element has none of its own: a name given in parts.
        ("<name><given>Jane  Ann</given> <family>Smith</family></name>", "Jane Ann Smith"),
        ("<name> <given> </given> </name>", None),
        ("<name/>", None),
    ],
)
def test_text_collapses_blanks_and_prefers_the_elements_own_text(xml: str, expected: str | None) -> None:
    assert xmlnav.text(_xml(xml)) == expected


def test_text_and_attributes_of_nothing_are_none() -> None:
    assert xmlnav.text(None) is None
    assert xmlnav.attr(None, "value") is None
    assert xmlnav.attr(_xml('<a value="  "/>'), "value") is None
    assert xmlnav.attr(_xml('<a value=" x y "/>'), "value") == "x y"
    assert (
        xmlnav.first_attr([_xml("<a/>"), _xml('<a v=" "/>'), _xml('<a v="2"/>'), _xml('<a v="3"/>')], "v")
        == "2"
    )


@pytest.mark.parametrize(
    ("xml", "null"),
    [
        ('<v nullFlavor="NA"/>', True),
        ('<v nullFlavor=" "/>', False),
        (f'<v xmlns:xsi="{XSI}" xsi:nil="true"/>', True),
        (f'<v xmlns:xsi="{XSI}" xsi:nil=" 1 "/>', True),
        (f'<v xmlns:xsi="{XSI}" xsi:nil="false"/>', False),
        ('<v nil="true"/>', False),  # only the XML Schema instance attribute counts
        ("<v/>", False),
    ],
)
def test_is_null(xml: str, null: bool) -> None:
    assert xmlnav.is_null(_xml(xml)) is null


def test_nothing_is_not_null() -> None:
    assert xmlnav.is_null(None) is False


def test_local_names_and_namespaces() -> None:
    root = _xml('<h:a xmlns:h="urn:hl7-org:v3"><b/><!-- c --><?pi x?></h:a>')
    element, comment, instruction = root
    assert (xmlnav.local_name(root), xmlnav.namespace(root)) == ("a", HL7_NS)
    assert (xmlnav.local_name(element), xmlnav.namespace(element)) == ("b", None)
    assert (xmlnav.local_name(comment), xmlnav.namespace(comment)) == ("", None)
    assert (xmlnav.local_name(instruction), xmlnav.namespace(instruction)) == ("", None)
    assert list(xmlnav.elements(root)) == [element]


def test_paths_take_every_match_in_any_namespace() -> None:
    root = _xml(
        '<r xmlns:o="urn:other"><a><b n="1"/><b n="2"/></a><o:a><b n="3"/></o:a><c><b n="4"/></c></r>'
    )
    assert [b.get("n") for b in xmlnav.every(root, "a", "b")] == ["1", "2", "3"]
    assert xmlnav.every(None, "a") == []
    assert xmlnav.every(root) == [root]
    assert xmlnav.first(root, "a", "b").get("n") == "1"  # type: ignore[union-attr]
    assert xmlnav.first(root, "x") is None
    assert xmlnav.first(None) is None
    assert [b.get("n") for b in xmlnav.descendants(root, "b")] == ["1", "2", "3", "4"]
    assert [a.tag for a in xmlnav.children(root, "a")] == ["a", "{urn:other}a"]


# --- payload details ----------------------------------------------------------------------------------


def test_a_plan_without_dates_names_each_missing_one() -> None:
    def undated(root: etree._Element) -> None:
        for value in find(root, "//h:cPPStartDate/h:value"):
            del value.attrib["value"]

    parsed = response(edited(repc(), undated))
    assert parsed.records[0].plans[0] == Plan("CPP", None, None)
    assert parsed.warnings == ("plan_start_missing",)


def test_a_record_without_a_subject_is_a_child_with_no_ids() -> None:
    def no_subject(root: etree._Element) -> None:
        subject = one(root, f"{RECORD}/h:CP-ISRecord/h:subject")
        subject.getparent().remove(subject)

    (record,) = response(edited(repc(), no_subject)).records
    assert (record.subject_kind, record.subject_ids) == ("child", ())
    assert response(edited(repc(), no_subject)).warnings == ("subject_missing",)


def test_a_null_access_entry_without_content_is_skipped() -> None:
    def null_entry(root: etree._Element) -> None:
        container = find(root, f"{REPC_PAYLOAD}/h:pertinentInformation13")[0]
        for child in list(container):
            container.remove(child)
        etree.SubElement(container, hl7("pertinentCP-ISNHSQuery"), nullFlavor="NA")

    parsed = response(edited(repc(), null_entry))
    assert [entry.query_id for entry in parsed.access] == [QUERY_IDS[1]]


def test_an_access_organisation_is_read_from_its_name_only() -> None:
    def address_only(root: etree._Element) -> None:
        author = find(root, "//h:pertinentCP-ISNHSQuery/h:author")[0]
        for child in list(author):
            author.remove(child)
        system = etree.SubElement(author, hl7("COCT_TP145104GB01.System"))
        organisation = etree.SubElement(system, hl7("maintainingOrganization"))
        etree.SubElement(organisation, hl7("addr")).text = "1 High Street"

    entry = response(edited(repc(), address_only)).access[0]
    assert (entry.organisation, entry.role, entry.person) == (None, None, None)
