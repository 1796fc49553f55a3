"""The CP-IS query: timestamps, names, the builder and the scheduled-care guard (the simulator's reader of it is
tested in tests/sim/test_wire.py)."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path

import pytest
import xmlschema
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from batch.hl7 import (
    DEFAULT_ROLE_CODE_SYSTEM,
    DEFAULT_VERSION_CODE,
    HL7_NS,
    NPFIT_NS,
    OID_ASID,
    OID_ODS_ORGANISATION,
    SCHEDULED_CARE_FLAG,
    QueryTemplate,
    Sender,
    UnsafeQueryError,
    assert_scheduled_care,
    build_query,
    format_hl7_ts,
    parse_hl7_ts,
    split_person_name,
)
from batch.hl7.timestamps import UK_TIME
from batch.hl7.xmlbuild import template_slot
from batch.ids import new_id
from batch.xmlsafe import parse_xml

SHARED = Path(__file__).resolve().parents[2] / "shared"
QUERY_XSD = SHARED / "cpis-schemas" / "Schemas" / "QUPC_IN000006GB01.xsd"
MESSAGES_SPEC = SHARED / "spec" / "cpis-messages.md"

NS = {"h": HL7_NS, "n": NPFIT_NS}
NHS_NUMBER = "9990000018"
OUR_ASID = "999000000101"
SPINE_ASID = "999000000001"
NOW = datetime(2024, 7, 1, 9, 30, 15, tzinfo=UTC)  # 10:30:15 in London (BST)
UUID_UPPER = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
SENDER = Sender(
    asid=OUR_ASID,
    ods_code="SIM01",
    organisation_name="Simulated Test Trust",
    responsible_person_name="Dr Jane Q Smith",
    role_code="R0260",
    role_name="General Medical Practitioner",
)


def make_query(**overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "nhs_number": NHS_NUMBER,
        "message_id": new_id(),
        "query_id": new_id(),
        "sender": SENDER,
        "spine_asid": SPINE_ASID,
        "now": NOW,
    }
    arguments.update(overrides)
    return build_query(**arguments)  # type: ignore[arg-type]


def one(root: etree._Element, path: str) -> etree._Element:
    found = root.xpath(path, namespaces=NS)
    assert len(found) == 1, f"{path}: {len(found)} matches"
    return found[0]


def serialise(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


PARAMETERS = (
    "/h:QUPC_IN000006GB01/h:ControlActEvent/h:subject/h:CP-ISQueryStub/h:cP-ISNHSQuery/h:queryByParameter"
)
DEVICE = "//h:cP-ISNHSQuery/h:author/h:COCT_TP145104GB01.System"


@pytest.fixture(scope="session")
def query_schema() -> xmlschema.XMLSchema10:
    if not QUERY_XSD.is_file():
        pytest.skip(f"CP-IS schemas not found at {QUERY_XSD.parent} (expected ../shared beside the checkout)")
    return xmlschema.XMLSchema10(str(QUERY_XSD), validation="lax")


# --- timestamps (docs/decisions.md#d5) ---------------------------------------------------------


def test_format_uses_london_summer_time() -> None:
    assert format_hl7_ts(NOW) == "20240701103015"


def test_format_uses_gmt_in_winter_and_converts_other_offsets() -> None:
    assert format_hl7_ts(datetime(2024, 1, 15, 8, 0, tzinfo=UTC)) == "20240115080000"
    five_hours_behind = timezone(timedelta(hours=-5))
    assert format_hl7_ts(datetime(2024, 1, 15, 3, 0, tzinfo=five_hours_behind)) == "20240115080000"


def test_format_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match=r"^HL7 timestamps are built from timezone-aware datetimes only$"):
        format_hl7_ts(datetime(2024, 1, 15, 8, 0))

    class NoOffset(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

    with pytest.raises(ValueError, match=r"^HL7 timestamps are built from timezone-aware datetimes only$"):
        format_hl7_ts(datetime(2024, 1, 15, 8, 0, tzinfo=NoOffset()))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240115", datetime(2024, 1, 15)),
        ("202401151230", datetime(2024, 1, 15, 12, 30)),
        ("20240115123045", datetime(2024, 1, 15, 12, 30, 45)),
        ("20240115123045+0000", datetime(2024, 1, 15, 12, 30, 45)),
        ("20240115123045-0500", datetime(2024, 1, 15, 12, 30, 45)),
        ("202401151230+0100", datetime(2024, 1, 15, 12, 30)),
        ("20240115+0000", datetime(2024, 1, 15)),
        ("20240115123045.123", datetime(2024, 1, 15, 12, 30, 45)),
        (" 20240115 ", datetime(2024, 1, 15)),
    ],
)
def test_parse_accepts_8_12_14_digits_and_drops_the_offset(raw: str, expected: datetime) -> None:
    assert parse_hl7_ts(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "2024",
        "2024011",
        "2024011512",  # 10 digits
        "2024011512304",  # 13 digits
        "20241301",  # month 13
        "202402300000",  # 30 February
        "20240115250000",  # hour 25
        "00000101",  # year 0
        "20240115+00",
        "2024-01-15",
        "yesterday",
        "٢٠٢٤٠١١٥",  # Arabic-Indic digits are not HL7 digits
    ],
)
def test_parse_returns_none_for_garbage(raw: str | None) -> None:
    assert parse_hl7_ts(raw) is None


@given(st.text(max_size=30))
def test_parse_never_raises(raw: str) -> None:
    result = parse_hl7_ts(raw)
    assert result is None or result.tzinfo is None


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)))
def test_format_then_parse_gives_london_wall_clock(moment: datetime) -> None:
    expected = moment.astimezone(UK_TIME).replace(tzinfo=None, microsecond=0)
    assert parse_hl7_ts(format_hl7_ts(moment)) == expected


# --- responsible person's name (docs/decisions.md#d3) ------------------------------------------


@pytest.mark.parametrize(
    ("full", "prefix", "given_names", "family"),
    [
        ("Dr Jane Q Smith", "Dr", ("Jane", "Q"), "Smith"),
        ("Jane Smith", None, ("Jane",), "Smith"),
        ("prof. Ann Lee", "prof.", ("Ann",), "Lee"),
        ("  Mx   Sam   O'Neil  ", "Mx", ("Sam",), "O'Neil"),
        ("Miss Ann Marie Lee", "Miss", ("Ann", "Marie"), "Lee"),
        ("Doctor Who Smith", None, ("Doctor", "Who"), "Smith"),  # not a known title
        ("MX Sam Jones", "MX", ("Sam",), "Jones"),
        ("Mr. X Jones", "Mr.", ("X",), "Jones"),
        ("Drx Sam Jones", None, ("Drx", "Sam"), "Jones"),
    ],
)
def test_split_person_name(full: str, prefix: str | None, given_names: tuple[str, ...], family: str) -> None:
    name = split_person_name(full)
    assert (name.prefix, name.given, name.family) == (prefix, given_names, family)


@pytest.mark.parametrize("full", ["", "   ", "Smith", "Dr Smith", "Mrs", "dr. Smith"])
def test_split_person_name_needs_given_and_family(full: str) -> None:
    with pytest.raises(ValueError, match=r"^a person name needs at least one given name and a family name$"):
        split_person_name(full)


# --- the built query ---------------------------------------------------------------------------


def test_query_is_utf8_with_declaration_and_hl7_root() -> None:
    data = make_query()
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = parse_xml(data)
    assert root.tag == f"{{{HL7_NS}}}QUPC_IN000006GB01"
    assert root.nsmap == {None: HL7_NS, "npfitlc": NPFIT_NS}


M_ID = "6C7F3F5B-0E0A-4D9B-9C7A-2B8F1D3E4A51"
Q_ID = "0B1E2D3C-4A5B-4C6D-8E7F-9A0B1C2D3E4F"


def _expected_query(*, message_id: str, query_id: str, nhs_number: str, stamp: str, name: str) -> bytes:
    """The whole query, byte for byte (docs/protocol.md#p5 with our values)."""
    asid = '<id root="1.2.826.0.1285.0.2.0.107" extension="{}"/>'
    device = '<device classCode="DEV" determinerCode="INSTANCE">' + asid + "</device>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<QUPC_IN000006GB01 xmlns="urn:hl7-org:v3" xmlns:npfitlc="NPFIT:HL7:Localisation">'
        f'<id root="{message_id}"/><creationTime value="{stamp}"/><versionCode code="v3INF_DMSv5.7:FIN"/>'
        '<interactionId root="2.16.840.1.113883.2.1.3.2.4.12" extension="QUPC_IN000006GB01"/>'
        '<processingCode code="P"/><processingModeCode code="T"/><acceptAckCode code="NE"/>'
        f'<communicationFunctionRcv typeCode="RCV">{device.format(SPINE_ASID)}</communicationFunctionRcv>'
        f'<communicationFunctionSnd typeCode="SND">{device.format(OUR_ASID)}</communicationFunctionSnd>'
        '<ControlActEvent classCode="CACT" moodCode="EVN"><author1 typeCode="AUT">'
        '<AgentSystemSDS classCode="AGNT"><agentSystemSDS classCode="DEV" determinerCode="INSTANCE">'
        f"{asid.format(OUR_ASID)}</agentSystemSDS></AgentSystemSDS></author1>"
        '<subject typeCode="SUBJ"><CP-ISQueryStub><cP-ISNHSQuery>'
        f'<effectiveTime value="{stamp}"/><id root="{query_id}"/>'
        '<author><npfitlc:contentId root="2.16.840.1.113883.2.1.3.2.4.18.16" extension="COCT_TP145104GB01#System"/>'
        f"<COCT_TP145104GB01.System>{asid.format(OUR_ASID)}<indirectAuthority><superiorAssignedEntity>"
        '<code code="R0260" codeSystem="2.16.840.1.113883.2.1.3.2.4.17.196"'
        ' displayName="General Medical Practitioner"/>'
        f"<assignedPerson><name>{name}</name></assignedPerson></superiorAssignedEntity></indirectAuthority>"
        '<maintainingOrganization><id root="2.16.840.1.113883.2.1.3.2.4.19.1" extension="SIM01"/>'
        "<name>Simulated Test Trust</name></maintainingOrganization></COCT_TP145104GB01.System></author>"
        f'<queryByParameter><person.NHSnumber><value extension="{nhs_number}"/></person.NHSnumber>'
        '<accessEventType><value value="false"/></accessEventType></queryByParameter>'
        "</cP-ISNHSQuery></CP-ISQueryStub></subject></ControlActEvent></QUPC_IN000006GB01>"
    ).encode()


def test_the_whole_query_byte_for_byte() -> None:
    assert make_query(message_id=M_ID, query_id=Q_ID) == _expected_query(
        message_id=M_ID,
        query_id=Q_ID,
        nhs_number=NHS_NUMBER,
        stamp="20240701103015",
        name="<prefix>Dr</prefix><given>Jane</given><given>Q</given><family>Smith</family>",
    )


def test_a_template_renders_each_attempt_afresh_and_a_name_without_title_has_no_prefix() -> None:
    template = QueryTemplate(
        sender=replace(SENDER, responsible_person_name="Jane Smith"), spine_asid=SPINE_ASID
    )
    winter = datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC)
    for message_id, query_id, nhs_number, now, stamp in [
        (M_ID, Q_ID, NHS_NUMBER, NOW, "20240701103015"),
        (Q_ID, M_ID, "9990000026", winter, "20241231235958"),
    ]:
        assert template.render(
            nhs_number=nhs_number, message_id=message_id, query_id=query_id, now=now
        ) == _expected_query(
            message_id=message_id,
            query_id=query_id,
            nhs_number=nhs_number,
            stamp=stamp,
            name="<given>Jane</given><family>Smith</family>",
        )


def test_scheduled_care_flag_is_last_child_of_query_by_parameter_and_false() -> None:
    assert SCHEDULED_CARE_FLAG == "false"
    root = parse_xml(make_query())
    parameters = one(root, PARAMETERS)
    assert [etree.QName(child).localname for child in parameters] == ["person.NHSnumber", "accessEventType"]
    flag = parameters[-1]
    assert [etree.QName(child).localname for child in flag] == ["value"]
    assert dict(flag[0].attrib) == {"value": "false"}
    assert len(root.xpath("//*[local-name()='accessEventType']")) == 1


def test_no_builder_parameter_can_touch_the_flag() -> None:
    parameters = set(inspect.signature(build_query).parameters)
    assert parameters == {
        "nhs_number",
        "message_id",
        "query_id",
        "sender",
        "spine_asid",
        "now",
        "version_code",
    }
    assert not any(
        field.startswith(("access", "scheduled", "unscheduled")) for field in Sender.__dataclass_fields__
    )


def test_identifiers_are_uppercase_uuids_in_the_right_places() -> None:
    message_id, query_id = new_id(), new_id()
    root = parse_xml(make_query(message_id=message_id, query_id=query_id))
    assert UUID_UPPER.fullmatch(message_id) and UUID_UPPER.fullmatch(query_id)
    assert dict(one(root, "/h:QUPC_IN000006GB01/h:id").attrib) == {"root": message_id}
    assert dict(one(root, "//h:cP-ISNHSQuery/h:id").attrib) == {"root": query_id}


def test_wrapper_values() -> None:
    root = parse_xml(make_query())
    assert one(root, "h:creationTime").get("value") == "20240701103015"
    assert one(root, "//h:cP-ISNHSQuery/h:effectiveTime").get("value") == "20240701103015"
    assert one(root, "h:versionCode").get("code") == DEFAULT_VERSION_CODE == "v3INF_DMSv5.7:FIN"
    interaction = one(root, "h:interactionId")
    assert dict(interaction.attrib) == {
        "root": "2.16.840.1.113883.2.1.3.2.4.12",
        "extension": "QUPC_IN000006GB01",
    }
    codes = [
        one(root, f"h:{tag}").get("code") for tag in ("processingCode", "processingModeCode", "acceptAckCode")
    ]
    assert codes == ["P", "T", "NE"]
    receiver = one(root, "h:communicationFunctionRcv/h:device/h:id")
    sender = one(root, "h:communicationFunctionSnd/h:device/h:id")
    assert dict(receiver.attrib) == {"root": OID_ASID, "extension": SPINE_ASID}
    assert dict(sender.attrib) == {"root": OID_ASID, "extension": OUR_ASID}


def test_version_code_can_be_overridden() -> None:
    root = parse_xml(make_query(version_code="V3NPfIT3.0"))
    assert one(root, "h:versionCode").get("code") == "V3NPfIT3.0"


def test_control_act_has_no_author_and_exactly_one_author1_with_our_asid() -> None:
    root = parse_xml(make_query())
    assert root.xpath("h:ControlActEvent/h:author", namespaces=NS) == []
    system = one(root, "h:ControlActEvent/h:author1/h:AgentSystemSDS/h:agentSystemSDS/h:id")
    assert dict(system.attrib) == {"root": OID_ASID, "extension": OUR_ASID}


def test_device_author_with_one_responsible_person() -> None:
    root = parse_xml(make_query())
    content_id = one(root, "//h:cP-ISNHSQuery/h:author/n:contentId")
    assert dict(content_id.attrib) == {
        "root": "2.16.840.1.113883.2.1.3.2.4.18.16",
        "extension": "COCT_TP145104GB01#System",
    }
    assert dict(one(root, f"{DEVICE}/h:id").attrib) == {"root": OID_ASID, "extension": OUR_ASID}
    entity = one(root, f"{DEVICE}/h:indirectAuthority/h:superiorAssignedEntity")
    assert dict(one(entity, "h:code").attrib) == {
        "code": "R0260",
        "codeSystem": DEFAULT_ROLE_CODE_SYSTEM,
        "displayName": "General Medical Practitioner",
    }
    name = one(entity, "h:assignedPerson/h:name")
    assert [(etree.QName(part).localname, part.text) for part in name] == [
        ("prefix", "Dr"),
        ("given", "Jane"),
        ("given", "Q"),
        ("family", "Smith"),
    ]
    assert dict(one(root, f"{DEVICE}/h:maintainingOrganization/h:id").attrib) == {
        "root": OID_ODS_ORGANISATION,
        "extension": "SIM01",
    }
    assert one(root, f"{DEVICE}/h:maintainingOrganization/h:name").text == "Simulated Test Trust"


def test_nhs_number_is_sent_without_root() -> None:
    root = parse_xml(make_query())
    assert dict(one(root, f"{PARAMETERS}/h:person.NHSnumber/h:value").attrib) == {"extension": NHS_NUMBER}


def test_payload_carries_no_prohibited_fixed_values() -> None:
    root = parse_xml(make_query())
    payload = one(root, "//h:CP-ISQueryStub")
    for element in payload.iter():
        assert not {"classCode", "moodCode", "typeCode"} & set(element.attrib), element.tag
        assert etree.QName(element).localname != "templateId"
    assert root.xpath("//h:cP-ISNHSQuery/h:code", namespaces=NS) == []


def test_text_beyond_ascii_is_sent_as_utf8_not_as_character_references() -> None:
    data = make_query(sender=replace(SENDER, organisation_name="Zoë's Trust ✓"))
    assert "<name>Zoë's Trust ✓</name>".encode() in data


def test_a_template_slot_is_marked_by_its_content_id() -> None:
    parent = etree.Element(f"{{{HL7_NS}}}author")
    slot = template_slot(parent, "COCT_TP145104GB01.Device.System")
    marker, element = parent
    assert (marker.tag, dict(marker.attrib)) == (
        f"{{{NPFIT_NS}}}contentId",
        {"root": "2.16.840.1.113883.2.1.3.2.4.18.16", "extension": "COCT_TP145104GB01.Device#System"},
    )
    assert element is slot and slot.tag == f"{{{HL7_NS}}}COCT_TP145104GB01.Device.System"


def test_markup_in_values_is_escaped_not_interpreted() -> None:
    sender = replace(SENDER, organisation_name='St Mary\'s & "Co" <Trust> ✓')
    root = parse_xml(make_query(sender=sender))
    assert one(root, f"{DEVICE}/h:maintainingOrganization/h:name").text == 'St Mary\'s & "Co" <Trust> ✓'
    assert len(root.xpath("//h:Trust", namespaces=NS)) == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nhs_number": "999000001"}, "nhs_number must be 10 digits"),
        ({"nhs_number": "99900000180"}, "nhs_number must be 10 digits"),
        ({"nhs_number": "999 000 0018"}, "nhs_number must be 10 digits"),
        ({"nhs_number": "٩٩٩٠٠٠٠٠١٨"}, "nhs_number must be 10 digits"),  # Arabic-Indic digits
        ({"message_id": new_id().lower()}, "message_id must be an uppercase UUID"),
        ({"query_id": "not-a-uuid"}, "query_id must be an uppercase UUID"),
        ({"query_id": new_id() + "0"}, "query_id must be an uppercase UUID"),
        ({"spine_asid": "12345"}, "spine_asid must be 12 digits"),
        ({"spine_asid": "9990000000011"}, "spine_asid must be 12 digits"),
        ({"sender": replace(SENDER, asid="SIM1")}, "sender.asid must be 12 digits"),
        ({"sender": replace(SENDER, ods_code=" ")}, "sender.ods_code must not be empty"),
        ({"sender": replace(SENDER, organisation_name="")}, "sender.organisation_name must not be empty"),
        ({"sender": replace(SENDER, role_code="\t")}, "sender.role_code must not be empty"),
        ({"sender": replace(SENDER, role_name="")}, "sender.role_name must not be empty"),
        ({"sender": replace(SENDER, role_code_system=" ")}, "sender.role_code_system must not be empty"),
        (
            {"sender": replace(SENDER, responsible_person_name="Smith")},
            "a person name needs at least one given name and a family name",
        ),
        ({"version_code": ""}, "version_code must not be empty"),
    ],
)
def test_bad_inputs_are_refused_without_echoing_them(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_query(**overrides)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^HL7 timestamps are built from timezone-aware datetimes only$"):
        make_query(now=datetime(2024, 7, 1, 9, 30))


def test_structure_matches_the_spec_skeleton() -> None:
    if not MESSAGES_SPEC.is_file():
        pytest.skip(f"spec not found at {MESSAGES_SPEC} (expected ../shared beside the checkout)")
    text = MESSAGES_SPEC.read_text(encoding="utf-8")
    section = text[text.index("### 3.5") :]
    skeleton = section[
        section.index("```xml") + len("```xml") : section.index("```", section.index("```xml") + 6)
    ]
    expected = parse_xml(skeleton.strip().encode("utf-8"))
    # The skeleton has one given name and no prefix.
    built = parse_xml(make_query(sender=replace(SENDER, responsible_person_name="Jane Smith")))

    def shape(root: etree._Element) -> list[tuple[int, str, tuple[str, ...]]]:
        rows = []
        for element in root.iter():
            depth = sum(1 for _ in element.iterancestors())
            rows.append((depth, element.tag, tuple(sorted(element.attrib))))
        return rows

    assert shape(built) == shape(expected)
    # Fixed values in the skeleton (anything that is not a {placeholder}) are reproduced exactly.
    for mine, theirs in zip(built.iter(), expected.iter(), strict=True):
        for key, value in theirs.attrib.items():
            if "{" not in value:
                assert mine.get(key) == value, (theirs.tag, key)


def test_query_validates_against_the_xsd_once_the_flag_is_removed(
    query_schema: xmlschema.XMLSchema10,
) -> None:
    root = parse_xml(make_query())
    flag = one(root, f"{PARAMETERS}/h:accessEventType")
    flag.getparent().remove(flag)
    assert [str(error.reason) for error in query_schema.iter_errors(root)] == []


def test_the_flag_is_the_only_schema_deviation(query_schema: xmlschema.XMLSchema10) -> None:
    errors = list(query_schema.iter_errors(parse_xml(make_query())))
    assert len(errors) == 1
    assert "accessEventType" in str(errors[0].reason)


def test_schema_rejects_lowercase_ids_so_the_validation_is_real(query_schema: xmlschema.XMLSchema10) -> None:
    root = parse_xml(make_query())
    flag = one(root, f"{PARAMETERS}/h:accessEventType")
    flag.getparent().remove(flag)
    identifier = one(root, "h:id")
    identifier.set("root", identifier.get("root", "").lower())
    assert list(query_schema.iter_errors(root))


# --- the send guard (docs/decisions.md#d1) -----------------------------------------------------


def test_guard_accepts_a_built_query() -> None:
    assert_scheduled_care(make_query())


def _mutated(mutate: object) -> bytes:
    root = parse_xml(make_query())
    mutate(root)  # type: ignore[operator]
    return serialise(root)


def _remove_flag(root: etree._Element) -> None:
    flag = one(root, f"{PARAMETERS}/h:accessEventType")
    flag.getparent().remove(flag)


def _duplicate_flag(root: etree._Element) -> None:
    parameters = one(root, PARAMETERS)
    parameters.append(etree.fromstring(etree.tostring(parameters[-1])))


def _duplicate_value(root: etree._Element) -> None:
    flag = one(root, f"{PARAMETERS}/h:accessEventType")
    flag.append(etree.fromstring(etree.tostring(flag[0])))


def _set_value(value: str) -> object:
    def mutate(root: etree._Element) -> None:
        one(root, f"{PARAMETERS}/h:accessEventType/h:value").set("value", value)

    return mutate


def _drop_value_attribute(root: etree._Element) -> None:
    del one(root, f"{PARAMETERS}/h:accessEventType/h:value").attrib["value"]


def _move_flag_out(root: etree._Element) -> None:
    flag = one(root, f"{PARAMETERS}/h:accessEventType")
    one(root, "//h:cP-ISNHSQuery").append(flag)


def _foreign_namespace(root: etree._Element) -> None:
    one(root, f"{PARAMETERS}/h:accessEventType").tag = "{urn:example:other}accessEventType"


def _stray_copy_elsewhere(root: etree._Element) -> None:
    flag = one(root, f"{PARAMETERS}/h:accessEventType")
    one(root, "h:ControlActEvent").append(etree.fromstring(etree.tostring(flag)))


def _second_query_by_parameter(root: etree._Element) -> None:
    query = one(root, "//h:cP-ISNHSQuery")
    extra = etree.SubElement(query, f"{{{HL7_NS}}}queryByParameter")
    etree.SubElement(extra, f"{{{HL7_NS}}}person.NHSnumber")


_NOT_CHILD = "accessEventType is not an HL7 child of queryByParameter"
_NOT_ONE_FALSE = "accessEventType must hold exactly one value 'false'"


def _value_in_another_namespace(root: etree._Element) -> None:
    one(root, f"{PARAMETERS}/h:accessEventType/h:value").tag = "{urn:example:other}value"


def _comment_beside_the_value(root: etree._Element) -> None:
    one(root, f"{PARAMETERS}/h:accessEventType").append(etree.Comment(" a comment is not a value "))


def _remove_query_by_parameter(root: etree._Element) -> None:
    parameters = one(root, PARAMETERS)
    parameters.getparent().remove(parameters)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_remove_flag, "0 accessEventType elements, expected 1"),
        (_duplicate_flag, "2 accessEventType elements, expected 1"),
        (_duplicate_value, _NOT_ONE_FALSE),
        (_set_value("true"), _NOT_ONE_FALSE),
        (_set_value("False"), _NOT_ONE_FALSE),
        (_set_value(" false"), _NOT_ONE_FALSE),
        (_set_value(""), _NOT_ONE_FALSE),
        (_drop_value_attribute, _NOT_ONE_FALSE),
        (_value_in_another_namespace, _NOT_ONE_FALSE),
        (_move_flag_out, _NOT_CHILD),
        (_foreign_namespace, _NOT_CHILD),
        (_stray_copy_elsewhere, "2 accessEventType elements, expected 1"),
        (_second_query_by_parameter, "2 queryByParameter elements, expected 1"),
        (_remove_query_by_parameter, "0 queryByParameter elements, expected 1"),
    ],
    ids=lambda p: getattr(p, "__name__", "set_value") if callable(p) else "",
)
def test_guard_rejects_unsafe_queries(mutate: object, reason: str) -> None:
    with pytest.raises(UnsafeQueryError, match=f"^refusing to send: {re.escape(reason)}$") as caught:
        assert_scheduled_care(_mutated(mutate))
    assert NHS_NUMBER not in str(caught.value)


def test_guard_ignores_comments_beside_the_value() -> None:
    assert_scheduled_care(_mutated(_comment_beside_the_value))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml",
        b"<QUPC_IN000006GB01",
        b'<!DOCTYPE x [<!ENTITY e "false">]><x><queryByParameter><accessEventType>'
        b'<value value="&e;"/></accessEventType></queryByParameter></x>',
    ],
)
def test_guard_rejects_non_xml_and_doctype(data: bytes) -> None:
    with pytest.raises(UnsafeQueryError, match=r"^refusing to send: the HL7 query is not well-formed XML$"):
        assert_scheduled_care(data)


def test_unsafe_query_error_is_a_value_error() -> None:
    assert issubclass(UnsafeQueryError, ValueError)
