"""The simulated Spine: wire format, ground truth, the scheduled-care detector, mutual TLS and every fault."""

from __future__ import annotations

import json
import os
import random
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
from lxml import etree

from batch.ebxml import (
    ACTION_QUERY,
    EB_NS,
    SERVICE,
    EbxmlMessage,
    MessageHeader,
    Rejected,
    build_acknowledgement,
    build_message,
    classify_sync_answer,
    parse_message,
    utc_timestamp,
)
from batch.hl7 import AppAcknowledgement, QueryFailed, QueryResponse, Sender, build_query, parse_reply
from batch.ids import new_id
from batch.pki import DevPki, make_dev_pki, make_untrusted_client
from batch.tls import client_context, server_context
from batch.xmlsafe import XmlError, parse_xml
from spine_sim.answers import SimIdentity
from spine_sim.dataset import (
    LOCAL_AUTHORITIES,
    Access,
    AppAckError,
    Child,
    ChildRecord,
    Dataset,
    DatasetError,
    Plan,
    check_digit,
    generate_dataset,
    is_valid_test_number,
    load_dataset,
    numbers_with,
)
from spine_sim.dataset import (
    QueryFailed as SimQueryFailed,
)
from spine_sim.delivery import acknowledges
from spine_sim.faults import (
    FAULT_NAMES,
    FaultConfig,
    FaultConfigError,
    FaultDecider,
    parse_fault_option,
)
from spine_sim.http11 import Exchange, Request, Response, listen_tcp, serve_tls
from spine_sim.server import QUERY_PATH, RESET_PATH, STATS_PATH, SimServer, SimSettings
from spine_sim.stats import SimStats

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "sample_data"
CLIENT_PARTY = "TESTCLIENT-0000001"
SIM = SimIdentity()
SENDER = Sender(
    asid="999000000002",
    ods_code="X99TST",
    organisation_name="Test Clinic Trust (simulated)",
    responsible_person_name="Dr Ada Testperson",
    role_code="R8000",
    role_name="Clinical Practitioner Access Role",
)
WAIT_S = 20.0  # upper bound for awaited events, so that a broken test fails instead of hanging


def _number(stem: str) -> str:
    digit = check_digit(stem)
    assert digit is not None
    return f"{stem}{digit}"


FLAGGED = _number("999123401")
TWO_RECORDS = _number("999123402")
UNBORN = _number("999123403")
NOT_ON_CPIS = _number("999123404")
NF_NUMBER = _number("999123405")
QUQI_ERROR = _number("999123406")
MCCI_ERROR = _number("999123407")
UNLISTED = _number("999123409")
ACCESS_ID = "0F5E2C1A-7B3D-4E9F-8A6B-1C2D3E4F5A6B"


def _dataset() -> Dataset:
    las = {la.code: la for la in LOCAL_AUTHORITIES[:2]}
    access = (
        Access(datetime(2026, 3, 1, 10, 15), "Northbridge General Hospital (simulated)", "Nurse", ACCESS_ID),
    )
    children = {
        FLAGGED: Child(
            FLAGGED,
            "Ada",
            "Simwell",
            date(2019, 5, 4),
            (
                ChildRecord(
                    "SIMLA01",
                    "child",
                    (Plan("CPP", date(2024, 1, 15), None), Plan("LAC", date(2023, 2, 1), date(2025, 6, 30))),
                ),
            ),
            access,
        ),
        TWO_RECORDS: Child(
            TWO_RECORDS,
            "Bryn",
            "Testbury",
            date(2020, 8, 9),
            (
                ChildRecord("SIMLA01", "child", (Plan("CPP", date(2025, 3, 1), date(2027, 9, 30)),)),
                ChildRecord("SIMLA02", "child", (Plan("LAC", date(2022, 7, 7), None),)),
            ),
        ),
        UNBORN: Child(
            UNBORN,
            "Cora",
            "Mockford",
            date(1996, 2, 2),
            (ChildRecord("SIMLA02", "unborn", (Plan("UCP", date(2026, 5, 1), date(2027, 1, 31)),)),),
        ),
        NOT_ON_CPIS: Child(NOT_ON_CPIS, "Dara", "Fakeham", date(2018, 1, 1)),
    }
    errors: dict[str, SimQueryFailed | AppAckError] = {
        QUQI_ERROR: SimQueryFailed(code="SIMQE01", display="Simulated query processing error"),
        MCCI_ERROR: AppAckError(code="SIMAE01", display="Simulated application rejection"),
    }
    not_found = {
        NF_NUMBER: SimQueryFailed(code="SIMNF01", display="Query returned no data", response_code="NF")
    }
    return Dataset(las, children, errors, not_found)


# --- a tiny inbound endpoint playing cpis-batch's receiver -------------------------------------------------


@dataclass
class Received:
    message: EbxmlMessage
    body: bytes

    @property
    def header(self) -> MessageHeader:
        return self.message.header


@dataclass
class Receiver:
    """Acknowledges every reply (or answers ``status`` without one) and hands each to the test in order."""

    ssl_context: Any
    status: int = 200
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Received](max_buffer_size=100)

    async def handle(self, request: Request, exchange: Exchange) -> None:
        message = parse_message(
            request.headers.get("content-type", ""), request.body, request.headers.get("soapaction")
        )
        item = Received(message, request.body)
        self.received.append(item)
        await self._send.send(item)
        if self.status != 200:
            await exchange.respond(Response(self.status, b"refused\n", "text/plain"))
            return
        ack = build_acknowledgement(
            message.header, our_party_key=CLIENT_PARTY, ack_message_id=new_id(), now=datetime.now(UTC)
        )
        await exchange.respond(Response(200, ack, "text/xml; charset=UTF-8"))

    async def next(self) -> Received:
        with anyio.fail_after(WAIT_S):
            return await self._receive.receive()


@dataclass
class Harness:
    server: SimServer
    receiver: Receiver
    http: httpx.AsyncClient
    pki: DevPki

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(STATS_PATH)
        response.raise_for_status()
        return dict(response.json())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def running_spine(
    pki: DevPki,
    *,
    dataset: Dataset | None = None,
    faults: FaultConfig | None = None,
    latency_s: float = 0.0,
    receiver_status: int = 200,
) -> AsyncIterator[Harness]:
    receiver = Receiver(server_context(pki.client_cert, pki.client_key, pki.ca_cert), status=receiver_status)
    async with anyio.create_task_group() as task_group:
        listener, receiver_port = await listen_tcp("127.0.0.1", 0)
        task_group.start_soon(serve_tls, listener, receiver.ssl_context, receiver.handle)
        settings = SimSettings(
            dataset=dataset or _dataset(),
            reply_url=f"https://127.0.0.1:{receiver_port}/cpis/inbound",
            latency_s=latency_s,
            faults=faults or FaultConfig(),
        )
        server = SimServer(
            settings,
            server_ssl=server_context(pki.spine_cert, pki.spine_key, pki.ca_cert),
            client_ssl=client_context(pki.spine_cert, pki.spine_key, pki.ca_cert),
        )
        await task_group.start(server.serve)
        verify = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
        async with httpx.AsyncClient(verify=verify, base_url=server.url, timeout=WAIT_S) as http:
            yield Harness(server, receiver, http, pki)
        task_group.cancel_scope.cancel()


@dataclass(frozen=True)
class SentQuery:
    message_id: str
    conversation_id: str
    response: httpx.Response


def _query_hl7(nhs_number: str, message_id: str) -> bytes:
    return build_query(
        nhs_number=nhs_number,
        message_id=message_id,
        query_id=new_id(),
        sender=SENDER,
        spine_asid=SIM.asid,
        now=datetime.now(UTC),
    )


def _envelope(
    hl7: bytes, message_id: str, conversation_id: str, *, to_party: str = SIM.party_key, cpa_id: str = SIM.cpa_id,
    action: str = ACTION_QUERY,
) -> tuple[dict[str, str], bytes]:  # fmt: skip
    header = MessageHeader(
        from_party=CLIENT_PARTY,
        to_party=to_party,
        cpa_id=cpa_id,
        conversation_id=conversation_id,
        service=SERVICE,
        action=action,
        message_id=message_id,
        timestamp=utc_timestamp(datetime.now(UTC)),
    )
    return build_message(header, hl7)


async def send_query(
    http: httpx.AsyncClient,
    nhs_number: str,
    *,
    edit_hl7: Callable[[bytes], bytes] | None = None,
    **envelope: str,
) -> SentQuery:
    message_id, conversation_id = new_id(), new_id()
    hl7 = _query_hl7(nhs_number, message_id)
    if edit_hl7 is not None:
        hl7 = edit_hl7(hl7)
    headers, body = _envelope(hl7, message_id, conversation_id, **envelope)
    response = await http.post(QUERY_PATH, content=body, headers=headers)
    return SentQuery(message_id, conversation_id, response)


def _accepted(sent: SentQuery) -> None:
    assert sent.response.status_code == 202
    assert sent.response.content == b""


def _fault_codes(body: bytes) -> list[str]:
    """The nasp:errorCode values of a SOAP fault, read off the wire."""
    ns = {"nasp": "http://national.carerecords.nhs.uk/schema/"}
    return [e.text or "" for e in parse_xml(body).iterfind(".//nasp:errorList/nasp:error/nasp:errorCode", ns)]


def _reply_of(received: Received) -> Any:
    assert received.message.hl7 is not None
    return parse_reply(received.message.hl7)


# --- the happy paths against ground truth -------------------------------------------------------------------


async def test_flagged_child_gets_a_repc_matching_the_dataset(pki: DevPki) -> None:
    dataset = _dataset()
    async with running_spine(pki, dataset=dataset) as spine:
        sent = await send_query(spine.http, FLAGGED)
        _accepted(sent)
        received = await spine.receiver.next()

    header = received.header
    assert header.action == "REPC_IN000007GB01"
    assert header.service == SERVICE
    assert header.from_party == SIM.party_key
    assert header.to_party == CLIENT_PARTY
    assert header.cpa_id == SIM.cpa_id
    assert header.ref_to_message_id == sent.message_id
    assert header.conversation_id == sent.conversation_id
    assert header.message_id != sent.message_id
    assert received.message.soap_action == f"{SERVICE}/REPC_IN000007GB01"

    reply = _reply_of(received)
    assert isinstance(reply, QueryResponse)
    assert reply.message_id == header.message_id
    expected = dataset.expected(FLAGGED)
    assert expected.outcome == "flagged"
    assert [
        (p.plan_type, p.start.date() if p.start else None, p.end.date() if p.end else None)
        for _, p in reply.plans
    ] == [(p.type, p.start, p.end) for p in expected.plans]
    (record,) = reply.records
    la = expected.records[0].local_authority
    assert (record.local_authority.code, record.local_authority.name) == (la.code, la.name)
    assert (record.local_authority.office_phone, record.local_authority.emergency_phone) == (
        la.office_phone,
        la.emergency_phone,
    )
    assert record.subject_kind == "child"
    assert FLAGGED in record.subject_ids
    assert reply.total_access_records == len(reply.access) == 1
    assert reply.access[0].organisation == "Northbridge General Hospital (simulated)"


async def test_two_records_and_unborn_child(pki: DevPki) -> None:
    dataset = _dataset()
    async with running_spine(pki, dataset=dataset) as spine:
        _accepted(await send_query(spine.http, TWO_RECORDS))
        two = _reply_of(await spine.receiver.next())
        _accepted(await send_query(spine.http, UNBORN))
        unborn = _reply_of(await spine.receiver.next())

    assert isinstance(two, QueryResponse)
    assert [r.local_authority.code for r in two.records] == ["SIMLA01", "SIMLA02"]
    assert [p.plan_type for _, p in two.plans] == [p.type for p in dataset.expected(TWO_RECORDS).plans]
    assert isinstance(unborn, QueryResponse)
    assert [(r.subject_kind, [p.plan_type for p in r.plans]) for r in unborn.records] == [("unborn", ["UCP"])]


@pytest.mark.parametrize("number", [NOT_ON_CPIS, UNLISTED])
async def test_not_found_gives_quqi_nhsncc002(pki: DevPki, number: str) -> None:
    async with running_spine(pki) as spine:
        sent = await send_query(spine.http, number)
        _accepted(sent)
        received = await spine.receiver.next()

    assert received.header.action == "QUQI_IN010000UK14"
    reply = _reply_of(received)
    assert isinstance(reply, QueryFailed)
    assert reply.message_ref == sent.message_id
    assert reply.response_code == "ID"
    assert [(i.code, i.display_name) for i in reply.issues] == [("NHSNCC002", "No Record Found")]
    assert reply.not_found
    assert _dataset().expected(number).outcome == "not_flagged"


async def test_nf_variant_is_not_found_by_its_response_code_alone(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        _accepted(await send_query(spine.http, NF_NUMBER))
        received = await spine.receiver.next()

    assert received.message.hl7 is not None
    reply = parse_reply(received.message.hl7, not_found_codes=frozenset())
    assert isinstance(reply, QueryFailed)
    assert reply.response_code == "NF"
    assert reply.not_found
    assert [i.code for i in reply.issues] == ["SIMNF01"]


async def test_error_numbers(pki: DevPki) -> None:
    dataset = _dataset()
    async with running_spine(pki, dataset=dataset) as spine:
        quqi_sent = await send_query(spine.http, QUQI_ERROR)
        quqi = await spine.receiver.next()
        mcci_sent = await send_query(spine.http, MCCI_ERROR)
        mcci = await spine.receiver.next()

    quqi_reply = _reply_of(quqi)
    assert isinstance(quqi_reply, QueryFailed)
    assert not quqi_reply.not_found
    assert quqi_reply.message_ref == quqi_sent.message_id
    assert [i.code for i in quqi_reply.issues] == ["SIMQE01"]
    assert dataset.expected(QUQI_ERROR).error_codes == ("SIMQE01",)

    assert mcci.header.action == "MCCI_IN010000UK13"
    mcci_reply = _reply_of(mcci)
    assert isinstance(mcci_reply, AppAcknowledgement)
    assert mcci_reply.ack_type == "AE"
    assert mcci_reply.message_ref == mcci_sent.message_id
    assert [d.code for d in mcci_reply.details] == ["SIMAE01"]
    assert dataset.expected(MCCI_ERROR).outcome == "error"


async def test_hl7_acknowledgements_refer_to_the_hl7_message_id(pki: DevPki) -> None:
    hl7_id = new_id()

    def other_hl7_id(hl7: bytes) -> bytes:
        root = parse_xml(hl7)
        root.find("{urn:hl7-org:v3}id").set("root", hl7_id)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    async with running_spine(pki) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS, edit_hl7=other_hl7_id)
        received = await spine.receiver.next()
    assert received.header.ref_to_message_id == sent.message_id
    assert _reply_of(received).message_ref == hl7_id


# --- decision (a): the local-authority notification detector --------------------------------------------------


def _edit_flag(change: Callable[[etree._Element, etree._Element], None]) -> Callable[[bytes], bytes]:
    def edit(hl7: bytes) -> bytes:
        root = parse_xml(hl7)
        (flag,) = root.iter("{urn:hl7-org:v3}accessEventType")
        change(flag, flag.getparent())
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    return edit


def _remove(flag: etree._Element, parent: etree._Element) -> None:
    parent.remove(flag)


def _set_true(flag: etree._Element, parent: etree._Element) -> None:
    flag[0].set("value", "true")


def _duplicate(flag: etree._Element, parent: etree._Element) -> None:
    parent.append(etree.fromstring(etree.tostring(flag)))


async def test_control_query_without_flag_counts_exactly_one_notification(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        _accepted(await send_query(spine.http, FLAGGED))
        await spine.receiver.next()
        assert (await spine.stats())["notifications"] == 0

        _accepted(await send_query(spine.http, FLAGGED, edit_hl7=_edit_flag(_remove)))
        # Still answered normally.
        assert (await spine.receiver.next()).header.action == "REPC_IN000007GB01"
        stats = await spine.stats()
    assert stats["notifications"] == 1
    assert stats["queries_accepted"] == 2


@pytest.mark.parametrize("change", [_set_true, _duplicate], ids=["value-true", "flag-twice"])
async def test_any_flag_but_one_false_is_a_notification(pki: DevPki, change: Callable[..., None]) -> None:
    async with running_spine(pki) as spine:
        _accepted(await send_query(spine.http, NOT_ON_CPIS, edit_hl7=_edit_flag(change)))
        await spine.receiver.next()
        assert (await spine.stats())["notifications"] == 1


# --- mutual TLS ---------------------------------------------------------------------------------------------


async def test_client_without_a_certificate_from_the_ca_is_refused(pki: DevPki, tmp_path: Path) -> None:
    untrusted_cert, untrusted_key = make_untrusted_client(tmp_path)
    async with running_spine(pki) as spine:
        contexts = [
            client_context(untrusted_cert, untrusted_key, pki.ca_cert),
            ssl.create_default_context(cafile=pki.ca_cert),  # no client certificate at all
        ]
        for context in contexts:
            async with httpx.AsyncClient(verify=context, base_url=spine.server.url) as stranger:
                with pytest.raises(httpx.TransportError):
                    await send_query(stranger, FLAGGED)
        stats = await spine.stats()
    assert stats["queries_received"] == 0
    assert spine.receiver.received == []


async def test_reply_leg_uses_spines_certificate(pki: DevPki) -> None:
    # The receiver requires a client certificate from the CA; a delivered reply proves the sim presented one.
    async with running_spine(pki) as spine:
        _accepted(await send_query(spine.http, FLAGGED))
        await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_sent"] == 1)
    assert stats["replies_failed"] == 0


# --- header checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "code", "description"),
    [
        ({"cpa_id": "WRONGCPA"}, "ValueNotRecognized", "501319:Unknown eb:CPAId"),
        ({"to_party": "SOMEONE-ELSE"}, "ValueNotRecognized", "501314:Invalid To Party Type attribute"),
        ({"action": "QUPC_IN000008GB01"}, "NotSupported", None),
    ],
    ids=["wrong-cpa-id", "wrong-to-party", "wrong-action"],
)
async def test_bad_envelope_gets_a_message_error(
    pki: DevPki, envelope: dict[str, str], code: str, description: str | None
) -> None:
    async with running_spine(pki) as spine:
        sent = await send_query(spine.http, FLAGGED, **envelope)
        stats = await spine.stats()
    assert sent.response.status_code == 500
    root = parse_xml(sent.response.content)
    ns = {"eb": EB_NS}
    (error,) = root.findall(".//eb:ErrorList/eb:Error", ns)
    assert error.get(f"{{{EB_NS}}}errorCode") == code
    if description is not None:
        assert error.findtext("eb:Description", namespaces=ns) == description
    assert root.findtext(".//eb:MessageData/eb:RefToMessageId", namespaces=ns) == sent.message_id
    assert root.findtext(".//eb:Action", namespaces=ns) == "MessageError"
    answer = classify_sync_answer(500, sent.response.headers["content-type"], sent.response.content)
    assert isinstance(answer, Rejected) and not answer.retriable
    assert stats["queries_accepted"] == 0
    assert stats["queries_rejected"] == 1


async def test_unreadable_message_is_refused(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        response = await spine.http.post(QUERY_PATH, content=b"hello", headers={"content-type": "text/plain"})
        missing_hl7 = await send_query(spine.http, FLAGGED, edit_hl7=lambda _: b"<not-a-query/>")
        bad_asid = await send_query(
            spine.http, FLAGGED, edit_hl7=lambda h: h.replace(SENDER.asid.encode(), b"12")
        )
        stats = await spine.stats()
    assert response.status_code == 400
    for sent, code in ((missing_hl7, "ErrorBase1712"), (bad_asid, "ErrorBase1732")):
        assert sent.response.status_code == 500
        assert _fault_codes(sent.response.content)[0].startswith(code)
        answer = classify_sync_answer(500, "text/xml", sent.response.content)
        assert isinstance(answer, Rejected) and not answer.retriable
    assert stats["queries_received"] == 3
    assert stats["queries_accepted"] == 0


# --- faults, one at a time at rate 1.0 ---------------------------------------------------------------------


def _only(name: str, **settings: Any) -> FaultConfig:
    return FaultConfig(rates={name: 1.0}, seed=7, **settings)


async def test_drop_reply(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("drop_reply")) as spine:
        _accepted(await send_query(spine.http, FLAGGED))
        # Replies are scheduled before the 202 goes out, so nothing pending now means nothing will come.
        stats = await spine.stats()
    assert stats["faults_injected"] == {"drop_reply": 1}
    assert stats["queries_accepted"] == 1
    assert (stats["replies_pending"], stats["replies_sent"], stats["replies_failed"]) == (0, 0, 0)
    assert spine.receiver.received == []


async def test_duplicate_reply_has_the_same_message_id(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("duplicate_reply")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        first, second = await spine.receiver.next(), await spine.receiver.next()
    assert first.header.message_id == second.header.message_id
    assert first.body == second.body
    assert first.header.ref_to_message_id == sent.message_id


async def test_duplicate_reply_new_id(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("duplicate_reply_new_id")) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS)
        first, second = await spine.receiver.next(), await spine.receiver.next()
    assert first.header.message_id != second.header.message_id
    assert first.header.ref_to_message_id == second.header.ref_to_message_id == sent.message_id
    assert _reply_of(first).message_ref == _reply_of(second).message_ref == sent.message_id


async def test_reorder_replies(pki: DevPki) -> None:
    faults = _only("reorder_replies", reorder_window=2, reorder_hold_s=WAIT_S)
    async with running_spine(pki, faults=faults) as spine:
        first = await send_query(spine.http, FLAGGED)
        second = await send_query(spine.http, NOT_ON_CPIS)
        arrivals = [await spine.receiver.next(), await spine.receiver.next()]
    assert [r.header.ref_to_message_id for r in arrivals] == [second.message_id, first.message_id]


async def test_reordered_reply_is_overtaken_by_a_normal_one(pki: DevPki) -> None:
    # Pick a seed at which the first number is reordered and the second is not, so the second overtakes.
    config = FaultConfig(rates={"reorder_replies": 0.5}, reorder_hold_s=WAIT_S)
    seed = next(
        s
        for s in range(1000)
        if (d := FaultDecider(FaultConfig(rates=config.rates, seed=s))).decide(FLAGGED, 0).reorder_replies
        and not d.decide(NOT_ON_CPIS, 0).reorder_replies
    )
    faults = FaultConfig(rates=config.rates, seed=seed, reorder_hold_s=WAIT_S)
    async with running_spine(pki, faults=faults) as spine:
        held = await send_query(spine.http, FLAGGED)
        normal = await send_query(spine.http, NOT_ON_CPIS)
        arrivals = [await spine.receiver.next(), await spine.receiver.next()]
    assert [r.header.ref_to_message_id for r in arrivals] == [normal.message_id, held.message_id]


async def test_late_reply_waits_late_delay(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("late_reply", late_delay_s=0.3)) as spine:
        sent = await send_query(spine.http, FLAGGED)
        accepted_at = anyio.current_time()
        received = await spine.receiver.next()
        arrived_at = anyio.current_time()
    assert received.header.ref_to_message_id == sent.message_id
    # A lower bound only: the reply cannot come before its delay, however slow the machine.
    assert arrived_at - accepted_at >= 0.3 - 0.05


async def test_reply_before_accept(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("reply_before_accept"), latency_s=5.0) as spine:
        sent = await send_query(spine.http, FLAGGED)
        # No waiting: the reply was delivered and acknowledged before the 202 was written.
        assert [r.header.ref_to_message_id for r in spine.receiver.received] == [sent.message_id]
        _accepted(sent)
        stats = await spine.stats()
    assert stats["replies_sent"] == 1


@pytest.mark.parametrize(("fault", "codes", "retriable"), [
    ("soap_fault_retriable", {"200", "206", "208"}, True),
    ("soap_fault_permanent", {"101"}, False),
])  # fmt: skip
async def test_soap_faults(pki: DevPki, fault: str, codes: set[str], retriable: bool) -> None:
    async with running_spine(pki, faults=_only(fault)) as spine:
        sent = await send_query(spine.http, FLAGGED)
        stats = await spine.stats()
    assert sent.response.status_code == 500
    (code,) = _fault_codes(sent.response.content)
    assert code in codes
    answer = classify_sync_answer(500, sent.response.headers["content-type"], sent.response.content)
    assert isinstance(answer, Rejected)
    assert answer.retriable is retriable
    # Not processed: no reply, no notification, nothing accepted.
    assert (stats["queries_accepted"], stats["replies_pending"], stats["replies_sent"]) == (0, 0, 0)
    assert stats["faults_injected"] == {fault: 1}


async def test_retriable_fault_codes_cover_all_three() -> None:
    decider = FaultDecider(_only("soap_fault_retriable"))
    codes = {decider.decide(FLAGGED, n).soap_fault_code for n in range(60)}
    assert codes == {"200", "206", "208"}


async def test_message_error_fault(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("message_error")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        stats = await spine.stats()
    status = sent.response.status_code
    assert status in (200, 500)
    answer = classify_sync_answer(status, sent.response.headers["content-type"], sent.response.content)
    assert isinstance(answer, Rejected) and not answer.retriable
    root = parse_xml(sent.response.content)
    assert root.findtext(".//eb:RefToMessageId", namespaces={"eb": EB_NS}) == sent.message_id
    assert stats["queries_accepted"] == 0


async def test_message_error_uses_both_statuses() -> None:
    decider = FaultDecider(_only("message_error"))
    assert {decider.decide(FLAGGED, n).message_error_status for n in range(40)} == {200, 500}


async def test_mcci_error_reply_replaces_the_business_reply(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("mcci_error_reply")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        received = await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_pending"] == 0)
    assert received.header.action == "MCCI_IN010000UK13"
    reply = _reply_of(received)
    assert isinstance(reply, AppAcknowledgement)
    assert (reply.ack_type, reply.message_ref) == ("AE", sent.message_id)
    assert stats["replies_sent"] == 1


async def test_malformed_reply(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("malformed_reply")) as spine:
        sent = await send_query(spine.http, FLAGGED)
        received = await spine.receiver.next()
    assert received.header.ref_to_message_id == sent.message_id
    assert received.message.hl7
    with pytest.raises(XmlError):
        parse_xml(received.message.hl7)


async def test_unknown_reply_comes_in_addition_to_the_real_one(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("unknown_reply")) as spine:
        sent = await send_query(spine.http, NOT_ON_CPIS)
        real, unknown = await spine.receiver.next(), await spine.receiver.next()
    assert real.header.ref_to_message_id == _reply_of(real).message_ref == sent.message_id
    assert unknown.header.ref_to_message_id not in (None, sent.message_id)
    assert _reply_of(unknown).message_ref == unknown.header.ref_to_message_id
    assert unknown.header.conversation_id != sent.conversation_id


async def test_connection_reset(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("connection_reset")) as spine:
        with pytest.raises(httpx.TransportError):
            await send_query(spine.http, FLAGGED)
        stats = await spine.stats()
    assert stats["queries_received"] == 1
    assert stats["queries_accepted"] == 0
    assert stats["faults_injected"] == {"connection_reset": 1}
    assert stats["replies_pending"] == 0


async def test_slow_accept(pki: DevPki) -> None:
    async with running_spine(pki, faults=_only("slow_accept", slow_accept_s=0.3)) as spine:
        started = anyio.current_time()
        sent = await send_query(spine.http, FLAGGED)
        elapsed = anyio.current_time() - started
        received = await spine.receiver.next()
    _accepted(sent)
    assert elapsed >= 0.3 - 0.05  # lower bound only
    assert received.header.ref_to_message_id == sent.message_id


async def test_failed_reply_post_is_counted_and_not_resent(pki: DevPki) -> None:
    async with running_spine(pki, receiver_status=503) as spine:
        _accepted(await send_query(spine.http, FLAGGED))
        await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_pending"] == 0)
        # Express route: one POST, never a second. A further query's reply arriving next proves nothing else
        # was queued ahead of it.
        second = await send_query(spine.http, NOT_ON_CPIS)
        following = await spine.receiver.next()
    assert (stats["replies_sent"], stats["replies_failed"]) == (0, 1)
    assert following.header.ref_to_message_id == second.message_id
    assert len(spine.receiver.received) == 2


def test_every_fault_has_a_test() -> None:
    covered = {
        "drop_reply", "duplicate_reply", "duplicate_reply_new_id", "reorder_replies", "late_reply",
        "reply_before_accept", "soap_fault_retriable", "soap_fault_permanent", "message_error",
        "mcci_error_reply", "malformed_reply", "unknown_reply", "connection_reset", "slow_accept",
    }  # fmt: skip
    assert covered == FAULT_NAMES


# --- the decider ----------------------------------------------------------------------------------------------


def test_decider_is_deterministic_and_ignores_arrival_order() -> None:
    rates = {name: 0.2 for name in FAULT_NAMES}
    keys = [(n, k) for n in generate_dataset(50, seed=3).nhs_numbers() for k in range(3)]
    first = {key: FaultDecider(FaultConfig(rates=rates, seed=11)).decide(*key) for key in keys}
    shuffled = keys[:]
    random.Random(5).shuffle(shuffled)
    decider = FaultDecider(FaultConfig(rates=rates, seed=11))
    second = {key: decider.decide(*key) for key in shuffled}
    assert first == second
    other_seed = FaultDecider(FaultConfig(rates=rates, seed=12))
    assert any(other_seed.decide(*key) != first[key] for key in keys)
    # The occurrence matters: a re-query of the same number is decided afresh.
    assert any(first[(n, 0)] != first[(n, 1)] for n, _ in keys)


def test_decider_rates() -> None:
    numbers = generate_dataset(400, seed=9).nhs_numbers()
    hits = sum(
        FaultDecider(FaultConfig(rates={"drop_reply": 0.3}, seed=1)).decide(n, 0).drop_reply for n in numbers
    )
    assert 0.2 * len(numbers) < hits < 0.4 * len(numbers)
    never = FaultDecider(FaultConfig(rates={"drop_reply": 0.0}))
    assert all(never.decide(n, 0).injected == () for n in numbers)


def test_rejecting_faults_preempt_reply_faults() -> None:
    decision = FaultDecider(FaultConfig(rates=dict.fromkeys(FAULT_NAMES, 1.0))).decide(FLAGGED, 0)
    assert decision.injected == ("connection_reset",)


def test_fault_options() -> None:
    assert parse_fault_option("drop_reply=0.25") == ("drop_reply", 0.25)
    for bad in ("drop_reply", "nonsense=0.1", "drop_reply=2", "drop_reply=x"):
        with pytest.raises(FaultConfigError):
            parse_fault_option(bad)
    with pytest.raises(FaultConfigError):
        FaultConfig(rates={"drop_reply": -0.1})


# --- stats --------------------------------------------------------------------------------------------------


async def test_stats_endpoint_and_reset(pki: DevPki) -> None:
    async with running_spine(pki) as spine:
        for number in (FLAGGED, FLAGGED, NOT_ON_CPIS):
            _accepted(await send_query(spine.http, number))
            await spine.receiver.next()
        stats = await spine.server.wait_for_stats(lambda s: s["replies_sent"] == 3)
        served = await spine.stats()
        reset = await spine.http.post(RESET_PATH)
        after = await spine.stats()
        wrong_method = await spine.http.post(STATS_PATH)
    assert served["queries_by_nhs_number"] == {FLAGGED: 2, NOT_ON_CPIS: 1}
    assert (stats["queries_received"], stats["queries_accepted"], stats["replies_sent"]) == (3, 3, 3)
    assert stats["notifications"] == 0
    assert 1 <= served["max_queries_in_1s_window"] <= 3
    assert served["in_flight_max"] >= 1
    assert set(served) >= {
        "queries_received", "queries_accepted", "replies_sent", "replies_failed", "notifications",
        "queries_by_nhs_number", "faults_injected", "max_queries_in_1s_window", "in_flight_max",
    }  # fmt: skip
    assert reset.status_code == 200
    assert after["queries_received"] == after["replies_sent"] == 0
    assert after["queries_by_nhs_number"] == {}
    assert wrong_method.status_code == 405


def test_rate_window_is_sliding() -> None:
    stats = SimStats()
    for t in (0.0, 0.5, 0.9, 1.0, 1.45, 1.95):
        stats.query_arrived(t)
    # (0.45, 1.45] holds 0.5, 0.9, 1.0, 1.45; a fixed 1 s bucket would have seen at most 3.
    assert stats.max_queries_in_1s_window == 4


def test_acknowledgement_check() -> None:
    header = MessageHeader(CLIENT_PARTY, SIM.party_key, SIM.cpa_id, new_id(), SERVICE, "X", new_id(), "t")
    ack = build_acknowledgement(
        header, our_party_key=CLIENT_PARTY, ack_message_id=new_id(), now=datetime.now(UTC)
    )
    assert acknowledges(ack, header.message_id)
    assert not acknowledges(ack, new_id())
    assert not acknowledges(b"<not-xml", header.message_id)


# --- the dataset ----------------------------------------------------------------------------------------------


def test_generated_dataset_is_valid_reproducible_and_varied(tmp_path: Path) -> None:
    dataset = generate_dataset(300, seed=42)
    assert dataset == generate_dataset(300, seed=42)
    assert dataset != generate_dataset(300, seed=43)
    numbers = dataset.nhs_numbers()
    assert len(numbers) == len(set(numbers)) == 300
    assert all(is_valid_test_number(n) for n in numbers)
    assert len(dataset.flagged_numbers()) == 90
    plans = [p for n in dataset.flagged_numbers() for p in dataset.expected(n).plans]
    assert {p.type for p in plans} == {"CPP", "LAC", "UCP"}
    assert any(p.end is None for p in plans) and any(p.end is not None for p in plans)
    assert any(len(dataset.expected(n).plans) > 1 for n in dataset.flagged_numbers())
    assert (
        len({r.local_authority.code for n in dataset.flagged_numbers() for r in dataset.expected(n).records})
        > 1
    )
    assert numbers_with(dataset, "error")
    assert any(isinstance(dataset.answer(n), AppAckError) for n in numbers)
    assert any(dataset.not_found.values())
    path = tmp_path / "dataset.json"
    dataset.dump(path)
    assert load_dataset(path) == dataset


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["children"][0].update(nhs_number="9991234013"), "not a valid"),
        (lambda d: d["children"][0]["records"][0].update(la_code="NOPE"), "la_code"),
        (lambda d: d["children"][0]["records"][0]["plans"][0].update(type="XYZ"), "type"),
        (lambda d: d["children"][0]["records"][0]["plans"][0].update(start="2024-13-01"), "date"),
        (lambda d: d["errors"].update({FLAGGED: {"kind": "quqi", "code": "X", "display": "y"}}), "records"),
        (
            lambda d: d["errors"].update({UNLISTED: {"kind": "quqi", "code": "X", "display": "No record"}}),
            "outcome",
        ),
    ],
    ids=["bad-number", "unknown-la", "plan-type", "bad-date", "error-with-records", "error-reads-not-found"],
)
def test_dataset_validation(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    data = _dataset().to_json()
    # Put the flagged child first so the mutations above hit a child with records.
    data["children"].sort(key=lambda c: c["nhs_number"] != FLAGGED)
    mutate(data)
    with pytest.raises(DatasetError, match=message) as raised:
        Dataset.from_json(data)
    assert FLAGGED not in str(raised.value)


# --- the sample data and the command line -----------------------------------------------------------------------


def test_sample_dataset_covers_the_cases() -> None:
    dataset = load_dataset(SAMPLE_DATA / "spine-dataset.json")
    flagged = [dataset.expected(n) for n in dataset.flagged_numbers()]
    plans = [p for e in flagged for p in e.plans]
    assert {p.type for p in plans} == {"CPP", "LAC", "UCP"}
    assert any(p.end is None for p in plans)
    assert any(p.end is not None and p.end.year <= 2025 for p in plans)
    assert any(p.end is not None and p.end.year >= 2027 for p in plans)
    assert any(len(e.plans) > 1 for e in flagged)
    assert any(r.subject_kind == "unborn" and r.plans[0].type == "UCP" for e in flagged for r in e.records)
    assert 2 <= len(dataset.local_authorities) <= 3
    assert any(dataset.children[n].access for n in dataset.flagged_numbers())
    errors = [dataset.answer(n) for n in numbers_with(dataset, "error")]
    assert any(isinstance(a, AppAckError) for a in errors)
    assert any(isinstance(a, SimQueryFailed) for a in errors)
    assert 20 <= len(dataset.children) <= 30


@pytest.mark.parametrize(
    ("name", "rows"), [("clinic-paediatrics.csv", (25, 35)), ("clinic-audiology.parquet", (12, 18))]
)
def test_sample_clinic_lists(name: str, rows: tuple[int, int]) -> None:
    path = SAMPLE_DATA / name
    frame = pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else pl.read_parquet(path)
    assert frame.columns == ["NHS No", "Patient Name", "DOB", "Appointment Date", "Clinic"]
    assert rows[0] <= frame.height <= rows[1]
    dates = [datetime.strptime(d, "%d/%m/%Y").date() for d in frame["Appointment Date"].to_list()]
    assert all(date(2026, 12, 1) <= d <= date(2027, 2, 28) for d in dates)


async def test_command_line_runs_until_sigterm_and_writes_stats(pki: DevPki, tmp_path: Path) -> None:
    dataset_path = tmp_path / "dataset.json"
    _dataset().dump(dataset_path)
    stats_path = tmp_path / "stats.json"
    command = [
        sys.executable, "-m", "spine_sim", "--pki", str(pki.directory), "--dataset", str(dataset_path),
        "--reply-url", "https://127.0.0.1:9/unused", "--fault", "drop_reply=1", "--stats-file", str(stats_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    async with await anyio.open_process(command, cwd=REPO, env=env) as process:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(WAIT_S):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        prefix = "cpis-batch sim listening on https://127.0.0.1:"
        text = line.decode().strip()
        assert text.startswith(prefix) and text.removeprefix(prefix).isdigit()
        verify = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
        async with httpx.AsyncClient(verify=verify, base_url=text.rsplit(" ", 1)[1]) as http:
            _accepted(await send_query(http, FLAGGED))
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(WAIT_S):
            assert await process.wait() == 0
    stats = json.loads(stats_path.read_text())
    assert stats["queries_accepted"] == 1
    assert stats["faults_injected"] == {"drop_reply": 1}


async def test_command_line_rejects_bad_options(pki: DevPki, tmp_path: Path) -> None:
    dataset_path = tmp_path / "dataset.json"
    _dataset().dump(dataset_path)
    command = [
        sys.executable, "-m", "spine_sim", "--pki", str(pki.directory), "--dataset", str(dataset_path),
        "--reply-url", "https://127.0.0.1:9/unused", "--fault", "no_such_fault=1",
    ]  # fmt: skip
    result = await anyio.run_process(command, cwd=REPO, check=False)
    assert result.returncode == 2
    assert b"unknown fault" in result.stderr
