"""What each business reply means for the child; whole verdicts compared.

See docs/protocol.md#p14, docs/protocol.md#p17 and docs/decisions.md#d15.
"""

from datetime import datetime

import pytest

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
from batch.outcomes import Verdict, judge
from batch.states import Disposition, Outcome
from batch.store import FlagResult, PlanRow, Resolution

NHS = "9991234012"
OTHER = "9991234020"
LA = LocalAuthority("SIMLA01", "Northshire", "01234567890", "09876543210", ("01111111111",))


def _response(
    *records: CpRecord,
    access: tuple[AccessEntry, ...] = (),
    trar: int | None = None,
    warnings: tuple[str, ...] = (),
) -> QueryResponse:
    return QueryResponse(
        message_id=None,
        message_ref=None,
        response_code="OK",
        records=records,
        access=access,
        total_access_records=trar,
        total_child_records=len(records),
        issues=(),
        warnings=warnings,
    )


def _record(subject_kind: str, ids: tuple[str, ...], *plans: Plan, la: LocalAuthority = LA) -> CpRecord:
    return CpRecord(la, plans, subject_kind, ids)


def _row(
    plan_type: str, start: str | None, end: str | None, kind: str = "child", la: LocalAuthority = LA
) -> PlanRow:
    return PlanRow(plan_type, start, end, la.code, la.name, la.office_phone, la.emergency_phone, kind)


def test_plans_become_flagged_rows_with_local_authority_and_access() -> None:
    plan_open = Plan("CPP", datetime(2024, 1, 15), None)
    plan_ended = Plan("LAC", datetime(2023, 3, 1, 9, 30), datetime(2025, 6, 30))
    other_la = LocalAuthority("SIMLA02", "Southshire", None, "07000000000", ())
    access = (
        AccessEntry(datetime(2026, 11, 2, 14, 5), None, "New Trust", "Doctor", None),
        AccessEntry(None, None, "Undated Trust", "Clerk", None),
        AccessEntry(datetime(2026, 10, 1, 9, 0), None, "Old Trust", "Nurse", None),
    )
    reply = _response(
        _record("child", (NHS,), plan_open, plan_ended),
        _record("child", (), Plan("UNKNOWN", None, None), la=other_la),
        access=access,
        warnings=("foreign_namespace",),
    )
    assert judge(reply, queried_nhs_number=NHS) == Verdict(
        Resolution(
            Outcome.FLAGGED,
            None,
            FlagResult(
                plans=(
                    _row("CPP", "2024-01-15", None),
                    _row("LAC", "2023-03-01T09:30", "2025-06-30"),
                    _row("UNKNOWN", None, None, la=other_la),
                ),
                access_count=3,
                child_records=2,
                last_access_at="2026-11-02T14:05",
                last_access_organisation="New Trust",
                warnings=("foreign_namespace",),
            ),
        ),
        Disposition.RESOLVED,
    )


@pytest.mark.parametrize(
    ("moment", "shown"),
    [
        (datetime(2024, 1, 15), "2024-01-15"),  # midnight: a date
        (datetime(2024, 1, 15, 9, 0), "2024-01-15T09:00"),
        (datetime(2024, 1, 15, 0, 30), "2024-01-15T00:30"),
        (datetime(2024, 1, 15, 0, 0, 30), "2024-01-15T00:00"),  # seconds dropped, but not a date
        (datetime(2024, 1, 15, 9, 0, 30), "2024-01-15T09:00"),
    ],
)
def test_times_are_dates_at_midnight_else_to_the_minute(moment: datetime, shown: str) -> None:
    reply = _response(_record("child", (NHS,), Plan("CPP", moment, moment)))
    verdict = judge(reply, queried_nhs_number=NHS)
    assert verdict == Verdict(
        Resolution(Outcome.FLAGGED, None, FlagResult((_row("CPP", shown, shown),), 0, 1, None, None, ())),
        Disposition.RESOLVED,
    )


def test_the_last_access_is_the_latest_wherever_it_is_listed() -> None:
    access = (
        AccessEntry(datetime(2026, 10, 1, 9, 0), None, "Old Trust", "Nurse", None),
        AccessEntry(None, None, "Undated Trust", "Clerk", None),
        AccessEntry(datetime(2026, 11, 2, 14, 5), None, "New Trust", "Doctor", None),
        AccessEntry(datetime(2026, 10, 15, 0, 0), None, "Middle Trust", "Doctor", None),
    )
    verdict = judge(
        _response(_record("child", (NHS,), Plan("CPP", None, None)), access=access), queried_nhs_number=NHS
    )
    assert verdict == Verdict(
        Resolution(
            Outcome.FLAGGED,
            None,
            FlagResult((_row("CPP", None, None),), 4, 1, "2026-11-02T14:05", "New Trust", ()),
        ),
        Disposition.RESOLVED,
    )


def test_undated_access_only_counts() -> None:
    access = (AccessEntry(None, None, "Undated Trust", "Clerk", None),)
    verdict = judge(
        _response(_record("child", (), Plan("CPP", None, None)), access=access), queried_nhs_number=NHS
    )
    assert verdict == Verdict(
        Resolution(Outcome.FLAGGED, None, FlagResult((_row("CPP", None, None),), 1, 1, None, None, ())),
        Disposition.RESOLVED,
    )


def test_total_access_records_wins_over_entries_listed_and_no_access_means_none() -> None:
    verdict = judge(_response(_record("child", (), Plan("CPP", None, None)), trar=7), queried_nhs_number=NHS)
    assert verdict == Verdict(
        Resolution(Outcome.FLAGGED, None, FlagResult((_row("CPP", None, None),), 7, 1, None, None, ())),
        Disposition.RESOLVED,
    )


def test_a_record_for_another_child_is_quarantined() -> None:
    reply = _response(
        _record("child", (NHS,), Plan("CPP", None, None)), _record("child", (OTHER,), Plan("LAC", None, None))
    )
    assert judge(reply, queried_nhs_number=NHS) == Verdict(
        None, Disposition.QUARANTINED, "reply names a different NHS number"
    )


def test_unborn_records_carry_the_mothers_ids_and_are_not_compared() -> None:
    verdict = judge(_response(_record("unborn", (OTHER,), Plan("UCP", None, None))), queried_nhs_number=NHS)
    assert verdict == Verdict(
        Resolution(
            Outcome.FLAGGED, None, FlagResult((_row("UCP", None, None, "unborn"),), 0, 1, None, None, ())
        ),
        Disposition.RESOLVED,
    )


def test_a_response_with_no_plans_is_an_error_not_a_flag() -> None:
    assert judge(_response(_record("child", (NHS,))), queried_nhs_number=NHS) == Verdict(
        Resolution(Outcome.ERROR, "REPC:no_plans"), Disposition.RESOLVED
    )


def test_query_failed_not_found_and_other_issues() -> None:
    issue = Issue("NHSNCC002", None, "No Record Found", "ER")
    not_found = QueryFailed(None, "M", "AE", "ID", (issue,), True, ())
    other = QueryFailed(
        None, "M", "AE", "ID", (Issue("SIMQE01", None, "boom", "ER"), Issue(None, None, "x", "ER")), False, ()
    )
    no_codes = QueryFailed(None, "M", "AE", "ID", (), False, ())
    assert judge(not_found, queried_nhs_number=NHS) == Verdict(
        Resolution(Outcome.NOT_FLAGGED), Disposition.RESOLVED
    )
    assert judge(other, queried_nhs_number=NHS) == Verdict(
        Resolution(Outcome.ERROR, "QUQI:SIMQE01"), Disposition.RESOLVED
    )
    assert judge(no_codes, queried_nhs_number=NHS) == Verdict(
        Resolution(Outcome.ERROR, "QUQI:no_code"), Disposition.RESOLVED
    )


def test_application_acknowledgements() -> None:
    detail = Issue("SIMAE01", None, "rejected", "ER")
    again = Issue("SIMAE01", None, "rejected again", "ER")
    extra = Issue("SIMAE02", None, "and this", "ER")
    accepted = AppAcknowledgement(None, "M", "aa", (), (), ())
    rejected = AppAcknowledgement(None, "M", "AR", (detail,), (again, extra), ())
    untyped = AppAcknowledgement(None, "M", None, (), (), ())
    assert judge(accepted, queried_nhs_number=NHS) == Verdict(None, Disposition.INFORMATIONAL, "MCCI AA")
    # A code given as a detail and as an issue is said once.
    assert judge(rejected, queried_nhs_number=NHS) == Verdict(
        Resolution(Outcome.ERROR, "MCCI:AR:SIMAE01+SIMAE02"), Disposition.RESOLVED
    )
    assert judge(untyped, queried_nhs_number=NHS) == Verdict(
        Resolution(Outcome.ERROR, "MCCI:none:no_code"), Disposition.RESOLVED
    )
