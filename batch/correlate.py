"""Inbound workflow: an ebXML reply in, a stored and correlated row and our acknowledgement out.

Order follows ebxml-transport §4.3: check the header, answer a duplicate with the stored acknowledgement,
build the acknowledgement, store the message and its effect in one transaction, only then wake the waiter
and acknowledge. A store failure answers 500 without acknowledgement, so nothing is acknowledged unstored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from batch.ebxml import (
    EbxmlMessage,
    EbxmlParseError,
    build_acknowledgement,
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


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str
    body: bytes


Resolved = Callable[[str, str], None]
"""Called with (run_id, nhs_number) after a reply resolving that child has been committed."""


class ReplyProcessor:
    def __init__(
        self,
        store: Store,
        *,
        our_party_key: str,
        not_found_codes: frozenset[str],
        on_resolved: Resolved,
        spine_party_key: str | None = None,
    ) -> None:
        self._store = store
        self._party_key = our_party_key
        self._spine_party_key = spine_party_key
        self._not_found = not_found_codes
        self._on_resolved = on_resolved
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    async def handle(self, content_type: str, soap_action: str | None, body: bytes) -> HttpAnswer:
        try:
            message = parse_message(content_type, body, soap_action)
        except EbxmlParseError as exc:
            self._count("unparseable_envelope")
            log.warning("inbound message refused: %s", exc)
            return HttpAnswer(500, "text/plain; charset=UTF-8", b"unparseable ebXML message\n")
        now = datetime.now(UTC)
        header = message.header
        problem = check_inbound_header(header, self._party_key)
        if problem is not None:
            self._count("message_error")
            log.warning("inbound message %s refused: %s", header.message_id or "-", problem.error_code)
            error = build_message_error(
                header,
                our_party_key=self._party_key,
                error_message_id=new_id(),
                now=now,
                error_code=problem.error_code,
                description=problem.description,
            )
            return HttpAnswer(200, XML_CONTENT_TYPE, error)

        if self._spine_party_key and header.from_party != self._spine_party_key:
            # Stored and correlated all the same (ebxml-transport §4.2); worth knowing about.
            log.warning("inbound message %s from an unexpected party", header.message_id)
        ack = build_acknowledgement(header, our_party_key=self._party_key, ack_message_id=new_id(), now=now)
        reply, parse_problem = self._parse(message)
        attempt = await self._store.find_attempt(
            message_ids=[m for m in (header.ref_to_message_id, reply.message_ref if reply else None) if m],
            conversation_id=header.conversation_id,
            query_event_ids=[a.query_id for a in reply.access if a.query_id]
            if isinstance(reply, QueryResponse)
            else [],
        )
        verdict = self._judge(reply, parse_problem, attempt.nhs_number if attempt else None)
        record = InboundRecord(
            message_id=header.message_id,
            action=header.action,
            ref_to_message_id=header.ref_to_message_id,
            conversation_id=header.conversation_id,
            from_party=header.from_party,
            raw=body,
            ack=ack,
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
            self._count("store_failed")
            log.exception("inbound message %s not stored; no acknowledgement sent", header.message_id)
            return HttpAnswer(500, "text/plain; charset=UTF-8", b"reply could not be stored\n")
        disposition = stored.disposition
        self._count(disposition.value)
        if stored.duplicate:
            log.info("duplicate inbound message %s acknowledged again", header.message_id)
        elif disposition in (Disposition.ORPHAN, Disposition.QUARANTINED, Disposition.UNPARSEABLE):
            # Kept for diagnosis and never reported against a patient (decision h); worth an operator's look.
            log.warning("inbound %s %s stored as %s", header.action, header.message_id, disposition)
        log.debug(
            "inbound %s %s for attempt %s: %s",
            header.action,
            header.message_id,
            attempt.message_id if attempt else "-",
            disposition,
        )
        if disposition is Disposition.RESOLVED and attempt is not None:
            self._on_resolved(attempt.run_id, attempt.nhs_number)
        return HttpAnswer(200, XML_CONTENT_TYPE, stored.ack)

    def _parse(self, message: EbxmlMessage) -> tuple[ParsedReply | None, str | None]:
        if message.hl7 is None:
            return None, "no HL7 part"
        try:
            return parse_reply(message.hl7, not_found_codes=self._not_found), None
        except ReplyParseError as exc:
            return None, str(exc)

    def _judge(self, reply: ParsedReply | None, parse_problem: str | None, nhs_number: str | None) -> Verdict:
        if nhs_number is None:
            return Verdict(None, Disposition.ORPHAN, parse_problem)
        if reply is None:
            # Kept for diagnosis; the child is resolved by a later reply or by the re-query after the timeout.
            return Verdict(None, Disposition.UNPARSEABLE, parse_problem)
        return judge(reply, queried_nhs_number=nhs_number)
