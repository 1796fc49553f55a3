"""What each business reply means for the child (cpis-messages §5, §8; decision h)."""

from datetime import datetime

from batch.hl7 import (
    AccessEntry,
    AppAcknowledgement,
    CpRecord,
    Issue,
    LocalAuthority,
    Plan,
    QueryFailed,
    QueryResponse,
)
from batch.outcomes import judge

NHS = "9991234012"
OTHER = "9991234020"
LA = LocalAuthority("SIMLA01", "Northshire", "01234567890", "09876543210", ())


def _response(
    *records: CpRecord, access: tuple[AccessEntry, ...] = (), trar: int | None = None
) -> QueryResponse:
    return QueryResponse(None, "OK", records, access, trar, len(records), (), ())


def _record(subject_kind: str, ids: tuple[str, ...], *plans: Plan) -> CpRecord:
    return CpRecord(LA, plans, subject_kind, ids)


def test_plans_become_flagged_rows_with_local_authority_and_access() -> None:
    plan_open = Plan("CPP", datetime(2024, 1, 15), None)
    plan_ended = Plan("LAC", datetime(2023, 3, 1, 9, 30), datetime(2025, 6, 30))
    access = (
        AccessEntry(datetime(2026, 10, 1, 9, 0), None, "Old Trust", "Nurse", None),
        AccessEntry(datetime(2026, 11, 2, 14, 5), None, "New Trust", "Doctor", None),
    )
    verdict = judge(
        _response(_record("child", (NHS,), plan_open, plan_ended), access=access), queried_nhs_number=NHS
    )
    assert verdict.resolution is not None and verdict.resolution.outcome == "flagged"
    result = verdict.resolution.result
    assert result is not None
    assert [(p["plan_type"], p["plan_start"], p["plan_end"]) for p in result["plans"]] == [
        ("CPP", "2024-01-15", None),
        ("LAC", "2023-03-01T09:30", "2025-06-30"),
    ]
    assert result["plans"][0]["la_code"] == "SIMLA01"
    assert result["access_count"] == 2
    assert result["last_access_organisation"] == "New Trust"


def test_total_access_records_wins_over_entries_listed() -> None:
    verdict = judge(_response(_record("child", (), Plan("CPP", None, None)), trar=7), queried_nhs_number=NHS)
    assert verdict.resolution is not None and verdict.resolution.result is not None
    assert verdict.resolution.result["access_count"] == 7


def test_a_record_for_another_child_is_quarantined() -> None:
    verdict = judge(_response(_record("child", (OTHER,), Plan("CPP", None, None))), queried_nhs_number=NHS)
    assert verdict.resolution is None
    assert verdict.disposition == "quarantined"


def test_unborn_records_carry_the_mothers_ids_and_are_not_compared() -> None:
    verdict = judge(_response(_record("unborn", (OTHER,), Plan("UCP", None, None))), queried_nhs_number=NHS)
    assert verdict.resolution is not None and verdict.resolution.outcome == "flagged"


def test_query_failed_not_found_and_other_issues() -> None:
    issue = Issue("NHSNCC002", None, "No Record Found", "ER")
    not_found = QueryFailed(None, "M", "AE", "ID", (issue,), True, ())
    other = QueryFailed(None, "M", "AE", "ID", (Issue("SIMQE01", None, "boom", "ER"),), False, ())
    assert judge(not_found, queried_nhs_number=NHS).resolution.outcome == "not_flagged"  # type: ignore[union-attr]
    failed = judge(other, queried_nhs_number=NHS).resolution
    assert failed is not None and (failed.outcome, failed.reason) == ("error", "QUQI:SIMQE01")


def test_application_acknowledgements() -> None:
    detail = Issue("SIMAE01", None, "rejected", "ER")
    accepted = AppAcknowledgement(None, "M", "AA", (), (), ())
    rejected = AppAcknowledgement(None, "M", "AR", (detail,), (), ())
    assert judge(accepted, queried_nhs_number=NHS).resolution is None
    result = judge(rejected, queried_nhs_number=NHS).resolution
    assert result is not None and (result.outcome, result.reason) == ("error", "MCCI:AR:SIMAE01")
