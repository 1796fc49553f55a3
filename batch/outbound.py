"""One attempt's outbound message: the HL7 query in its ebXML envelope, from the job's identifiers."""

from __future__ import annotations

from datetime import UTC, datetime

from batch.config import JobConfig
from batch.ebxml import ACTION_QUERY, SERVICE, MessageTemplate, utc_timestamp
from batch.hl7 import QueryTemplate
from batch.store import AttemptRef
from batch.transport import OutboundQuery


class QueryBuilder:
    """Builds `QUPC_IN000006GB01` messages for one job: both documents are built once and filled per attempt.

    Raises ValueError at construction for identifiers that would make a malformed message.
    """

    def __init__(self, cfg: JobConfig) -> None:
        self._hl7 = QueryTemplate(sender=cfg.sender, spine_asid=cfg.spine.asid, version_code=cfg.version_code)
        self._ebxml = MessageTemplate(
            from_party=cfg.sender_party_key,
            to_party=cfg.spine.party_key,
            cpa_id=cfg.spine.cpa_id,
            service=SERVICE,
            action=ACTION_QUERY,
        )

    def build(self, ref: AttemptRef, now: datetime | None = None) -> OutboundQuery:
        now = now or datetime.now(UTC)
        hl7 = self._hl7.render(
            nhs_number=ref.nhs_number, message_id=ref.message_id, query_id=ref.query_event_id, now=now
        )
        headers, body = self._ebxml.render(
            conversation_id=ref.conversation_id,
            message_id=ref.message_id,
            timestamp=utc_timestamp(now),
            hl7=hl7,
        )
        return OutboundQuery(ref.message_id, headers, body, hl7)
