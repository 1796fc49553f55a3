"""What a business reply means for the child it answers (cpis-messages §5, §8; decision h)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batch.hl7 import AppAcknowledgement, Issue, ParsedReply, QueryFailed, QueryResponse
from batch.store import Resolution


@dataclass(frozen=True)
class Verdict:
    """Resolution for the child (None: keep waiting), how the inbound row is filed, and a log-safe detail."""

    resolution: Resolution | None
    disposition: str
    detail: str | None = None


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.hour == 0 and moment.minute == 0 and moment.second == 0:
        return moment.date().isoformat()
    return moment.isoformat(timespec="minutes")


def _codes(issues: tuple[Issue, ...]) -> str:
    # An MCCI may carry the same code as a detail and as an issue; say it once.
    codes = list(dict.fromkeys(i.code for i in issues if i.code))
    return "+".join(codes) if codes else "no_code"


def judge(reply: ParsedReply, *, queried_nhs_number: str) -> Verdict:
    if isinstance(reply, QueryResponse):
        return _judge_response(reply, queried_nhs_number)
    if isinstance(reply, QueryFailed):
        if reply.not_found:
            return Verdict(Resolution("not_flagged", None, None), "answer")
        return Verdict(Resolution("error", f"QUQI:{_codes(reply.issues)}", None), "answer")
    if isinstance(reply, AppAcknowledgement):
        if (reply.ack_type or "").upper() == "AA":
            return Verdict(None, "informational", "MCCI AA")
        reason = f"MCCI:{reply.ack_type or 'none'}:{_codes(reply.details + reply.issues)}"
        return Verdict(Resolution("error", reason, None), "answer")
    raise TypeError(f"unexpected reply type {type(reply).__name__}")


def _judge_response(reply: QueryResponse, nhs_number: str) -> Verdict:
    for record in reply.records:
        # A child record naming another NHS number must never be reported against this patient (decision h).
        # Unborn-child records carry the mother's identifiers, so they are not compared.
        if record.subject_kind == "child" and record.subject_ids and nhs_number not in record.subject_ids:
            return Verdict(None, "quarantined", "reply names a different NHS number")
    plans: list[dict[str, Any]] = []
    for record, plan in reply.plans:
        la = record.local_authority
        plans.append(
            {
                "plan_type": plan.plan_type,
                "plan_start": _iso(plan.start),
                "plan_end": _iso(plan.end),
                "la_code": la.code,
                "la_name": la.name,
                "la_office_phone": la.office_phone,
                "la_emergency_phone": la.emergency_phone,
                "subject_kind": record.subject_kind,
            }
        )
    if not plans:
        return Verdict(Resolution("error", "REPC:no_plans", None), "answer")
    access_count = reply.total_access_records if reply.total_access_records is not None else len(reply.access)
    last = max(
        (a for a in reply.access if a.time is not None), key=lambda a: a.time or datetime.min, default=None
    )
    result = {
        "plans": plans,
        "access_count": access_count,
        "child_records": reply.total_child_records,
        "last_access_at": _iso(last.time) if last else None,
        "last_access_organisation": last.organisation if last else None,
        "warnings": list(reply.warnings),
    }
    return Verdict(Resolution("flagged", None, result), "answer")
