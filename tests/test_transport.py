"""The outbound leg over real httpx with `httpx.MockTransport` below it: what each answer from Spine means,
which ones are resent (each resend in a rate slot of its own), and what is never sent at all."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from batch.config import HttpConfig, JobConfig, SpineConfig, load_job
from batch.hl7 import UnsafeQueryError
from batch.ids import new_id
from batch.outbound import QueryBuilder
from batch.ratelimit import SlidingWindowLimiter
from batch.store import AttemptRef
from batch.transport import (
    MAX_ANSWER_BYTES,
    OutboundQuery,
    SendAccepted,
    SendRejected,
    SendUnanswered,
    SpineTransport,
)
from spine_sim.jobfile import job_tables, write_job
from spine_sim.signals import build_soap_fault

URL = "https://127.0.0.1:9/reliablemessaging/reliablerequest"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def cfg(tmp_path: Path) -> JobConfig:
    tables = job_tables(tmp=tmp_path, pki=tmp_path, inputs="x.csv", spine_url=URL, inbound_port=9)
    return load_job(write_job(tmp_path / "job.toml", tables))


def _query(cfg: JobConfig) -> OutboundQuery:
    return QueryBuilder(cfg).build(AttemptRef(new_id(), "RUN", "9991234012", new_id(), new_id()))


class Spine:
    """Answers POSTs from a script; records what arrived."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _send(cfg: JobConfig, spine: Spine, query: OutboundQuery | None = None, retries: int = 2):
    limiter = SlidingWindowLimiter(1000)
    transport = SpineTransport(
        spine=SpineConfig(URL, "999000000001", "SIMSPINE-0000001", "S1SIMCPIS0001"),
        http=HttpConfig(transport_retries=retries, backoff_s=0.001),
        ssl_context=ssl.create_default_context(),
        limiter=limiter,
        max_connections=4,
        transport=httpx.MockTransport(spine),
    )
    async with transport:
        slot = await limiter.acquire()
        result = await transport.send(query or _query(cfg), slot)
    return result, limiter, slot


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _fault(*codes: str, status: int = 500) -> httpx.Response:
    return httpx.Response(
        status, content=build_soap_fault(list(codes), "d"), headers={"content-type": "text/xml"}
    )


async def test_a_202_is_accepted_and_the_slot_knows_when_it_left(cfg: JobConfig) -> None:
    spine = Spine(httpx.Response(202))
    query = _query(cfg)
    result, limiter, slot = await _send(cfg, spine, query)
    assert result == SendAccepted()
    assert len(spine.requests) == 1 and limiter.grants == 1
    request = spine.requests[0]
    assert str(request.url) == URL and request.content == query.body
    assert request.headers["soapaction"] == query.headers["SOAPAction"]
    # (The round trip comes from httpcore's trace hooks, which a mock transport has none of.)
    assert slot.sent_at is not None


async def test_retriable_faults_are_resent_with_the_same_message_each_in_its_own_slot(cfg: JobConfig) -> None:
    spine = Spine(_fault("200"), httpx.Response(503), httpx.Response(202))
    result, limiter, _ = await _send(cfg, spine)
    assert result == SendAccepted()
    assert len(spine.requests) == 3
    assert len({r.content for r in spine.requests}) == 1  # the identical bytes, same M
    assert limiter.grants == 3


async def test_resends_end_and_the_last_reason_is_kept(cfg: JobConfig) -> None:
    spine = Spine(httpx.Response(503))
    result, _, _ = await _send(cfg, spine, retries=2)
    assert result == SendUnanswered("retriable:http_503", maybe_delivered=False)
    assert len(spine.requests) == 3


@pytest.mark.parametrize(
    ("error", "reason", "resent"),
    [
        (httpx.ConnectError("refused"), "connect_failed", True),
        (httpx.ConnectTimeout("slow"), "connect_timeout", True),
        (httpx.RemoteProtocolError("dropped"), "connection_lost", True),
        (httpx.ReadTimeout("no answer"), "response_timeout", False),
    ],
)
async def test_transport_failures(cfg: JobConfig, error: Exception, reason: str, resent: bool) -> None:
    spine = Spine(error)
    result, _, _ = await _send(cfg, spine, retries=1)
    # Only a read timeout means the request went out: Spine may hold it, so the reply timeout decides.
    assert result == SendUnanswered(reason, maybe_delivered=reason == "response_timeout")
    assert len(spine.requests) == (2 if resent else 1)


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (_fault("101"), "SOAPFault:101"),
        (_fault("200", status=400), "SOAPFault:200"),  # a client error is never resent
        (httpx.Response(404), "http_404"),
        (httpx.Response(200, content=b"<html>hello</html>"), "unrecognised_response"),
    ],
)
async def test_permanent_refusals_are_not_resent(cfg: JobConfig, answer: httpx.Response, code: str) -> None:
    spine = Spine(answer)
    result, _, _ = await _send(cfg, spine)
    assert isinstance(result, SendRejected) and result.code == code
    assert len(spine.requests) == 1


@pytest.mark.parametrize("declared", [True, False])
async def test_an_oversized_answer_is_not_read_and_proves_nothing(cfg: JobConfig, declared: bool) -> None:
    body = b"x" * (MAX_ANSWER_BYTES + 1)
    if declared:
        answer = httpx.Response(202, content=body)
    else:
        answer = httpx.Response(202, content=_chunks(body[:1000], body[1000:]))  # streamed, no Content-Length
    spine = Spine(answer)
    result, _, _ = await _send(cfg, spine)
    assert result == SendRejected("oversized_response", f"answer over {MAX_ANSWER_BYTES} bytes")


async def test_a_query_without_the_scheduled_care_flag_is_never_sent(cfg: JobConfig) -> None:
    query = _query(cfg)
    unsafe = OutboundQuery(
        query.message_id, query.headers, query.body, query.hl7.replace(b'value="false"', b'value="true"')
    )
    spine = Spine(httpx.Response(202))
    with pytest.raises(UnsafeQueryError, match="exactly one value 'false'"):
        await _send(cfg, spine, unsafe)
    assert spine.requests == []


async def test_proxy_variables_do_not_reroute_queries(
    cfg: JobConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    spine = Spine(httpx.Response(202))
    result, _, _ = await _send(cfg, spine)
    assert result == SendAccepted() and len(spine.requests) == 1
