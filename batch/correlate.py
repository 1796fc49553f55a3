"""Inbound workflow: an ebXML reply in, a stored and correlated row and our acknowledgement out.

Order follows docs/protocol.md#p11: check the header, answer a duplicate with the stored acknowledgement,
build the acknowledgement, store the message and its effect in one transaction, only then wake the waiter
and acknowledge. A store failure answers 500 without acknowledgement, so nothing is acknowledged unstored.

Reading a message (MIME, the SOAP envelope, the header checks, the HL7 payload, our acknowledgement) runs in a
worker thread, so a large or hostile body never stalls the event loop that paces the queries.

Beyond header checks 1-3 (docs/protocol.md#p10), a message must come from Spine: an `eb:From` party or
`eb:CPAId` other than the configured Spine's gets a MessageError, never an acknowledgement, and is filed
`rejected`; it reaches no child.
Messages that reach no child (`orphan`, `rejected`) are stored truncated to `SIDE_RAW_LIMIT` bytes and within
a quota per process (`SideQuota`); beyond it they are counted, answered as before (an orphan is acknowledged,
a rejected message gets its MessageError) and not stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from batch import mime
from batch.attempts import AttemptIndex
from batch.ebxml import (
    AckTemplate,
    EbxmlParseError,
    HeaderProblem,
    MessageHeader,
    build_message_error,
    check_inbound_header,
    parse_message,
)
from batch.hl7 import ParsedReply, QueryResponse, ReplyParseError, parse_reply
from batch.ids import new_id
from batch.outcomes import Verdict, judge
from batch.states import Disposition
from batch.store import InboundRecord, Store, StoreError

log = logging.getLogger(__name__)

XML_CONTENT_TYPE = "text/xml; charset=UTF-8"
SIDE_RAW_LIMIT = 64 << 10
"""Bytes of an orphan's or a rejected message's body that are stored."""
# Inbound messages are parsed off the event loop that paces sending, so a crafted one cannot stall it; reading
# holds the GIL, so more threads than this would only queue behind one another. A plain executor, created on
# first use and kept for the process: anyio's to_thread (capacity limiter, cancel scopes) cost more per reply
# than the hop itself.
_READ_THREADS = 2
_readers: ThreadPoolExecutor | None = None


def _reader_pool() -> ThreadPoolExecutor:
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="inbound-read")
    return _readers


_FIELD_LIMIT = 200
_LOUD_PER_KIND = 20
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def loggable_id(value: str | None) -> str:
    """A message id for a log line: a UUID as it is, anything else quoted and cut, so it cannot forge a line."""
    if not value:
        return "-"
    if _UUID.fullmatch(value):
        return value
    return repr(value[:64]) + ("…" if len(value) > 64 else "")


def _bounded(value: str | None) -> str | None:
    return value[:_FIELD_LIMIT] if value else value


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class SideQuota:
    """How much of the messages that reach no child one process stores, whichever limit comes first."""

    max_messages: int = 500
    max_bytes: int = 16 << 20


class _QuotaUse:
    def __init__(self, quota: SideQuota) -> None:
        self._quota = quota
        self.messages = 0
        self.bytes = 0

    def reserve(self, size: int) -> bool:
        if self.messages + 1 > self._quota.max_messages or self.bytes + size > self._quota.max_bytes:
            return False
        self.messages += 1
        self.bytes += size
        return True

    def release(self, size: int) -> None:
        self.messages -= 1
        self.bytes -= size


@dataclass(frozen=True)
class _Read:
    """What the worker thread made of one inbound message."""

    header: MessageHeader | None
    """None: the MIME framing or the SOAP envelope could not be read."""
    envelope_problem: str | None = None
    too_many_parts: bool = False
    problem: HeaderProblem | None = None
    """The header failed a check: `answer` is our MessageError, `answer_id` its MessageId."""
    answer: bytes = b""
    """Our acknowledgement, or our MessageError when `problem` is set."""
    answer_id: str = ""
    reply: ParsedReply | None = None
    parse_problem: str | None = None


Resolved = Callable[[str, str], None]
"""Called with (run_id, nhs_number) after a reply resolving that child has been committed."""


class ReplyProcessor:
    def __init__(
        self,
        store: Store,
        *,
        our_party_key: str,
        spine_party_key: str,
        spine_cpa_id: str,
        not_found_codes: frozenset[str],
        on_resolved: Resolved,
        side_quota: SideQuota | None = None,
        index: AttemptIndex | None = None,
    ) -> None:
        self._store = store
        self._party_key = our_party_key
        self._spine_party_key = spine_party_key
        self._spine_cpa_id = spine_cpa_id
        self._not_found = not_found_codes
        self._on_resolved = on_resolved
        self._index = index if index is not None else AttemptIndex()
        self._quota = _QuotaUse(side_quota or SideQuota())
        self._ack = AckTemplate(our_party_key=our_party_key, to_party=spine_party_key, cpa_id=spine_cpa_id)
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    def _log_notable(self, key: str, message: str, *args: object) -> None:
        """A warning for the first few of a kind (already counted), then debug: a flood must not flood the log."""
        seen = self.counts.get(key, 0)
        if seen > _LOUD_PER_KIND:
            log.debug(message, *args)
            return
        log.warning(message, *args)
        if seen == _LOUD_PER_KIND:
            log.warning("further inbound messages filed %s are logged at debug level only", key)

    async def handle(self, content_type: str, soap_action: str | None, body: bytes) -> HttpAnswer:
        loop = asyncio.get_running_loop()
        read = await loop.run_in_executor(_reader_pool(), self._read, content_type, soap_action, body)
        header = read.header
        if header is None:
            self._count("too_many_parts" if read.too_many_parts else "unparseable_envelope")
            log.warning("inbound message refused: %r", read.envelope_problem)
            return HttpAnswer(500, "text/plain; charset=UTF-8", b"unparseable ebXML message\n")
        if read.problem is not None:
            return await self._reject(read, header, body)

        message_ids = [
            m for m in (header.ref_to_message_id, read.reply.message_ref if read.reply else None) if m
        ]
        # Open children's attempts are held in memory; the state file answers for everything else.
        attempt = self._index.find(message_ids) or await self._store.find_attempt(
            message_ids=message_ids,
            conversation_id=header.conversation_id,
            query_event_ids=[a.query_id for a in read.reply.access if a.query_id]
            if isinstance(read.reply, QueryResponse)
            else [],
        )
        verdict = self._judge(read.reply, read.parse_problem, attempt.nhs_number if attempt else None)
        raw, reserved = body, 0
        if verdict.disposition is Disposition.ORPHAN:
            raw = body[:SIDE_RAW_LIMIT]
            if not self._quota.reserve(len(raw)):
                # Acknowledged all the same: it came from Spine, names no attempt, and Spine never resends.
                if self._count("orphan_not_stored") == 1:
                    log.warning(
                        "inbound orphans over the storage quota are counted, acknowledged, not stored"
                    )
                return HttpAnswer(200, XML_CONTENT_TYPE, read.answer)
            reserved = len(raw)
        record = InboundRecord(
            message_id=header.message_id,
            action=header.action,
            ref_to_message_id=header.ref_to_message_id,
            conversation_id=header.conversation_id,
            from_party=header.from_party,
            raw=raw,
            ack=read.answer,
            raw_size=len(body),
        )
        try:
            stored = await self._store.store_inbound(
                record,
                attempt=attempt,
                disposition=verdict.disposition,
                detail=verdict.detail,
                resolution=verdict.resolution,
            )
        except StoreError:
            if reserved:
                self._quota.release(reserved)
            self._count("store_failed")
            log.exception(
                "inbound message %s not stored; no acknowledgement sent", loggable_id(header.message_id)
            )
            return HttpAnswer(500, "text/plain; charset=UTF-8", b"reply could not be stored\n")
        disposition = stored.disposition
        if reserved and stored.duplicate:
            self._quota.release(reserved)
        self._count(disposition.value)
        message_id = loggable_id(header.message_id)
        if stored.duplicate:
            log.info("duplicate inbound message %s acknowledged again", message_id)
        elif disposition in (Disposition.ORPHAN, Disposition.QUARANTINED, Disposition.UNPARSEABLE):
            # Kept for diagnosis and never reported against a patient (docs/decisions.md#d15); worth an
            # operator's look.
            self._log_notable(
                disposition.value, "inbound %s %s stored as %s", header.action, message_id, disposition
            )
        log.debug(
            "inbound %s %s for attempt %s: %s",
            header.action,
            message_id,
            attempt.message_id if attempt else "-",
            disposition,
        )
        if disposition is Disposition.RESOLVED and attempt is not None:
            self._on_resolved(attempt.run_id, attempt.nhs_number)
        return HttpAnswer(200, XML_CONTENT_TYPE, stored.ack)

    async def _reject(self, read: _Read, header: MessageHeader, body: bytes) -> HttpAnswer:
        """A MessageError for a header that fails a check; filed `rejected` (bounded) while the quota lasts."""
        assert read.problem is not None
        self._count(Disposition.REJECTED.value)
        self._log_notable(
            Disposition.REJECTED.value,
            "inbound message %s refused: %s (%s)",
            loggable_id(header.message_id),
            read.problem.error_code,
            read.problem.description,
        )
        answer = HttpAnswer(200, XML_CONTENT_TYPE, read.answer)
        raw = body[:SIDE_RAW_LIMIT]
        if not self._quota.reserve(len(raw)):
            if self._count("rejected_not_stored") == 1:
                log.warning("rejected inbound messages over the storage quota are counted, not stored")
            return answer
        # Keyed by our MessageError's id: a claimed MessageId must not take the key of a genuine message.
        record = InboundRecord(
            message_id=read.answer_id,
            action=_bounded(header.action),
            ref_to_message_id=_bounded(header.ref_to_message_id),
            conversation_id=_bounded(header.conversation_id),
            from_party=_bounded(header.from_party),
            raw=raw,
            ack=read.answer,
            raw_size=len(body),
        )
        detail = f"{read.problem.error_code}: {read.problem.description}; MessageId {loggable_id(header.message_id)}"
        try:
            await self._store.store_inbound(
                record, attempt=None, disposition=Disposition.REJECTED, detail=detail, resolution=None
            )
        except StoreError:
            self._quota.release(len(raw))
            self._count("store_failed")
            log.exception("rejected inbound message %s not stored", loggable_id(header.message_id))
        return answer

    # -- in the worker thread -------------------------------------------------------------------------------

    def _read(self, content_type: str, soap_action: str | None, body: bytes) -> _Read:
        try:
            message = parse_message(content_type, body, soap_action)
        except EbxmlParseError as exc:
            return _Read(None, str(exc), too_many_parts=isinstance(exc.__cause__, mime.TooManyParts))
        header = message.header
        now = datetime.now(UTC)
        problem = check_inbound_header(header, self._party_key) or self._from_spine(header)
        if problem is not None:
            error_id = new_id()
            error = build_message_error(
                header,
                our_party_key=self._party_key,
                error_message_id=error_id,
                now=now,
                error_code=problem.error_code,
                description=problem.description,
            )
            return _Read(header, problem=problem, answer=error, answer_id=error_id)
        # Only Spine's party under its CPA gets this far (_from_spine), which is what the template is for.
        ack = self._ack.render(header, ack_message_id=new_id(), now=now)
        if message.hl7 is None:
            return _Read(header, answer=ack, parse_problem="no HL7 part")
        try:
            reply = parse_reply(message.hl7, not_found_codes=self._not_found)
        except ReplyParseError as exc:
            return _Read(header, answer=ack, parse_problem=str(exc))
        return _Read(header, answer=ack, reply=reply)

    def _from_spine(self, header: MessageHeader) -> HeaderProblem | None:
        """Only Spine's party, under the agreed CPA, may send replies (docs/protocol.md#p10 checks 4-5)."""
        if header.from_party != self._spine_party_key:
            return HeaderProblem(
                "ValueNotRecognized", "eb:From PartyId is not the Spine party this endpoint serves"
            )
        if header.cpa_id != self._spine_cpa_id:
            return HeaderProblem("ValueNotRecognized", "eb:CPAId is not the CPA agreed for this interaction")
        return None

    def _judge(self, reply: ParsedReply | None, parse_problem: str | None, nhs_number: str | None) -> Verdict:
        if nhs_number is None:
            return Verdict(None, Disposition.ORPHAN, parse_problem)
        if reply is None:
            # Kept for diagnosis; the child is resolved by a later reply or by the re-query after the timeout.
            return Verdict(None, Disposition.UNPARSEABLE, parse_problem)
        return judge(reply, queried_nhs_number=nhs_number)
