"""One attempt's outbound message: the HL7 query in its ebXML envelope, from the job's identifiers."""

from __future__ import annotations

from datetime import UTC, datetime

from batch.config import JobConfig
from batch.ebxml import ACTION_QUERY, SERVICE, MessageHeader, build_message, utc_timestamp
from batch.hl7 import build_query
from batch.store import AttemptRef
from batch.transport import OutboundQuery


class QueryBuilder:
    """Builds `QUPC_IN000006GB01` messages for one job."""

    def __init__(self, cfg: JobConfig) -> None:
        self._cfg = cfg

    def build(self, ref: AttemptRef, now: datetime | None = None) -> OutboundQuery:
        cfg = self._cfg
        now = now or datetime.now(UTC)
        hl7 = build_query(
            nhs_number=ref.nhs_number,
            message_id=ref.message_id,
            query_id=ref.query_event_id,
            sender=cfg.sender,
            spine_asid=cfg.spine.asid,
            now=now,
            version_code=cfg.version_code,
        )
        header = MessageHeader(
            from_party=cfg.sender_party_key,
            to_party=cfg.spine.party_key,
            cpa_id=cfg.spine.cpa_id,
            conversation_id=ref.conversation_id,
            service=SERVICE,
            action=ACTION_QUERY,
            message_id=ref.message_id,
            timestamp=utc_timestamp(now),
        )
        headers, body = build_message(header, hl7)
        return OutboundQuery(ref.message_id, headers, body, hl7)
