"""The asynchronous replies to one accepted query, shaped by the dataset's answer and the fault decision."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lxml import etree

from spine_sim.dataset import Answer, AppAckError, Dataset, QueryFailed, RecordsFound
from spine_sim.ebxml import SERVICE, MessageHeader, build_message, utc_timestamp
from spine_sim.faults import FaultDecision
from spine_sim.hl7 import APP_ACK_INTERACTION, QUERY_FAILED_INTERACTION, RESPONSE_INTERACTION, serialise
from spine_sim.ids import new_id
from spine_sim.replies import (
    SimAccess,
    SimLocalAuthority,
    SimPlan,
    SimRecord,
    app_acknowledgement,
    query_failed,
    query_response,
    restamp,
)

# Reply templates kept at most: a dataset's worth of children with records, and the few QUQI/MCCI answers.
_MAX_TEMPLATES = 50_000
# What an injected MCCI error says (obviously simulated, so it cannot be mistaken for a Spine code).
FAULT_MCCI_ERROR = AppAckError(code="SIMAE99", display="Simulated application error (fault injection)")


@dataclass(frozen=True)
class SimIdentity:
    """The simulator's own identifiers: synthetic, never NHS-issued (docs/decisions.md#d12)."""

    party_key: str = "SIMSPINE-0000001"
    asid: str = "999000000001"
    cpa_id: str = "S1SIMCPIS0001"


@dataclass(frozen=True)
class QueryContext:
    """An accepted query: its ebXML header, and what its HL7 part said."""

    header: MessageHeader
    nhs_number: str
    client_asid: str
    # The HL7 wrapper id, which HL7 acknowledgements refer to; equal to eb:MessageId for a correct client.
    hl7_message_id: str


@dataclass(frozen=True)
class _Refs:
    """What a reply refers back to: the ebXML and HL7 ids of the query, and its conversation."""

    ref_to_message_id: str
    hl7_message_ref: str
    conversation_id: str


@dataclass(frozen=True)
class OutboundReply:
    message_id: str
    ref_to_message_id: str
    action: str
    headers: Mapping[str, str]
    body: bytes


class ReplyFactory:
    def __init__(self, dataset: Dataset, identity: SimIdentity) -> None:
        self.dataset = dataset
        self.identity = identity
        self._templates: dict[tuple[object, str], tuple[str, etree._Element]] = {}

    def replies_for(self, query: QueryContext, decision: FaultDecision, now: datetime) -> list[OutboundReply]:
        """The replies to deliver, in delivery order (empty when the reply is dropped)."""
        answer: Answer = (
            FAULT_MCCI_ERROR if decision.mcci_error_reply else self.dataset.answer(query.nhs_number)
        )
        refs = _Refs(query.header.message_id, query.hl7_message_id, query.header.conversation_id)
        replies: list[OutboundReply] = []
        if not decision.drop_reply:
            first = self._reply(query, answer, refs, decision, now)
            replies.append(first)
            if decision.duplicate_reply:
                replies.append(first)  # the identical message: same eb:MessageId, same bytes
            if decision.duplicate_reply_new_id:
                replies.append(self._reply(query, answer, refs, decision, now))
        if decision.unknown_reply:
            # Refers to a message nobody sent, in a conversation nobody started: matches no attempt.
            unknown = new_id()
            replies.append(self._reply(query, answer, _Refs(unknown, unknown, new_id()), decision, now))
        return replies

    def _reply(
        self,
        query: QueryContext,
        answer: Answer,
        refs: _Refs,
        decision: FaultDecision,
        now: datetime,
    ) -> OutboundReply:
        reply_id = new_id()
        action, hl7 = self._hl7(query, answer, reply_id, refs.hl7_message_ref, now)
        if decision.malformed_reply:
            hl7 = _malformed(hl7)
        header = MessageHeader(
            from_party=self.identity.party_key,
            to_party=query.header.from_party,
            cpa_id=query.header.cpa_id,
            conversation_id=refs.conversation_id,
            service=SERVICE,
            action=action,
            message_id=reply_id,
            timestamp=utc_timestamp(now),
            ref_to_message_id=refs.ref_to_message_id,
        )
        headers, body = build_message(header, hl7)
        return OutboundReply(reply_id, refs.ref_to_message_id, action, headers, body)

    def _hl7(
        self, query: QueryContext, answer: Answer, reply_id: str, message_ref: str, now: datetime
    ) -> tuple[str, bytes]:
        # Built once per answer (and client ASID), then copied and restamped: most of a reply depends only on
        # the dataset, and building it afresh was the larger part of the simulator's work per query.
        key = (answer.child.nhs_number if isinstance(answer, RecordsFound) else answer, query.client_asid)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            # A fresh build already carries this reply's values: kept as the template, used as it is.
            action, tree = self._templates[key] = self._build(query, answer, reply_id, message_ref, now)
            return action, serialise(tree)
        action, tree = template
        root = restamp(copy.deepcopy(tree), reply_id=reply_id, message_ref=message_ref, now=now)
        return action, serialise(root)

    def _build(
        self, query: QueryContext, answer: Answer, reply_id: str, message_ref: str, now: datetime
    ) -> tuple[str, etree._Element]:
        common: dict[str, Any] = {
            "reply_id": reply_id,
            "message_ref": message_ref,
            "spine_asid": self.identity.asid,
            "client_asid": query.client_asid,
            "now": now,
        }
        if isinstance(answer, RecordsFound):
            child = answer.child
            records = [
                SimRecord(
                    local_authority=_local_authority(self.dataset, record.la_code),
                    plans=tuple(SimPlan(plan.type, plan.start, plan.end) for plan in record.plans),
                    subject_kind=record.subject_kind,
                    given=child.given,
                    family=child.family,
                    birth_date=child.birth_date,
                )
                for record in child.records
            ]
            access = [SimAccess(a.time, a.organisation, a.role, a.query_id) for a in child.access]
            tree = query_response(nhs_number=child.nhs_number, records=records, access=access, **common)
            return RESPONSE_INTERACTION, tree
        if isinstance(answer, QueryFailed):
            tree = query_failed(
                issue_code=answer.code,
                issue_display=answer.display,
                response_code=answer.response_code,
                qualifier=answer.qualifier,
                **common,
            )
            return QUERY_FAILED_INTERACTION, tree
        tree = app_acknowledgement(
            ack_type="AE", detail_code=answer.code, detail_display=answer.display, **common
        )
        return APP_ACK_INTERACTION, tree


def _local_authority(dataset: Dataset, code: str) -> SimLocalAuthority:
    la = dataset.local_authorities[code]
    return SimLocalAuthority(la.code, la.name, la.office_phone, la.emergency_phone)


def _malformed(hl7: bytes) -> bytes:
    """The first half of the document, cut after a tag: elements left open, so it is not well-formed."""
    cut = hl7.rfind(b">", 0, len(hl7) // 2)
    return hl7[: cut + 1] if cut > 0 else hl7[: len(hl7) // 2]
