"""What changed since the previous complete run: the pure comparison of two runs' typed outcomes."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.changes import (
    CHANGE_SCHEMA,
    Change,
    ChangeKind,
    RunOutcomes,
    change_counts,
    changes_frame,
    compare_runs,
    plan_open,
)
from batch.states import Outcome, RunStatus
from batch.store import ChildOutcome, FlagResult, PlanRow, Run, Store, frame_of_outcomes, state_file

DAY1 = date(2027, 1, 10)
DAY2 = date(2027, 1, 11)
A, B, C, D = "9990000018", "9990000026", "9990000034", "9990000042"


def plan(
    plan_type: str = "CPP",
    start: str | None = "2026-05-01",
    end: str | None = None,
    la: str = "LA1",
    subject_kind: str = "child",
) -> PlanRow:
    return PlanRow(
        plan_type=plan_type,
        plan_start=start,
        plan_end=end,
        la_code=la,
        la_name=f"{la} Council",
        la_office_phone=f"0{la[-1]}1632960000",
        la_emergency_phone=f"0{la[-1]}1632960999",
        subject_kind=subject_kind,
    )


def flagged(nhs: str, *plans: PlanRow) -> ChildOutcome:
    result = FlagResult(
        plans=plans, access_count=0, child_records=1, last_access_at=None, last_access_organisation=None
    )
    return ChildOutcome(nhs, Outcome.FLAGGED, None, result, 1, "M", "2027-01-10T01:00:00")


def other(nhs: str, outcome: Outcome, reason: str | None = None) -> ChildOutcome:
    return ChildOutcome(nhs, outcome, reason, None, 1, None, None)


def run(run_id: str, day: date, *outcomes: ChildOutcome) -> RunOutcomes:
    return RunOutcomes(run_id, day, frame_of_outcomes(outcomes))


def compare(
    before: list[ChildOutcome], after: list[ChildOutcome], day1: date = DAY1, day2: date = DAY2
) -> list[Change]:
    return compare_runs(run("R1", day1, *before), run("R2", day2, *after))


def test_newly_and_no_longer_flagged_give_a_row_per_plan() -> None:
    cpp, lac = plan("CPP"), plan("LAC", start="2026-06-01", la="LA2")
    changes = compare(
        [other(A, Outcome.NOT_FLAGGED), flagged(B, cpp, lac)],
        [flagged(A, lac, cpp), other(B, Outcome.NOT_FLAGGED)],
    )
    assert changes == [
        Change(A, ChangeKind.NEWLY_FLAGGED, None, cpp),
        Change(A, ChangeKind.NEWLY_FLAGGED, None, lac),
        Change(B, ChangeKind.NO_LONGER_FLAGGED, cpp, None),
        Change(B, ChangeKind.NO_LONGER_FLAGGED, lac, None),
    ]


@pytest.mark.parametrize(
    "unknown",
    [
        pytest.param(other(A, Outcome.ERROR, "QUQI:XX"), id="error"),
        pytest.param(other(A, Outcome.NO_REPLY, "no reply to 3 queries sent"), id="no_reply"),
        pytest.param(ChildOutcome(A, None, None, None, 0, None, None), id="open"),
        pytest.param(None, id="absent"),  # not on the lists, an invalid number, outside the window
    ],
)
def test_a_child_without_a_definite_answer_in_either_run_is_not_compared(
    unknown: ChildOutcome | None,
) -> None:
    was_flagged = [flagged(A, plan())]
    was_not = [other(A, Outcome.NOT_FLAGGED)]
    now = [unknown] if unknown is not None else []
    assert compare(was_flagged, now) == []
    assert compare(was_not, now) == []
    assert compare(now, [flagged(A, plan())]) == []
    assert compare(now, [other(A, Outcome.NOT_FLAGGED)]) == []


def test_an_unchanged_child_gives_nothing() -> None:
    ucp = plan("UCP", start="2026-09-01", end="2027-03-01", subject_kind="unborn")
    closed = plan("LAC", start="2020-01-01", end="2021-01-01")
    before = [flagged(A, plan(), ucp, closed), other(B, Outcome.NOT_FLAGGED)]
    after = [flagged(A, closed, ucp, plan()), other(B, Outcome.NOT_FLAGGED)]
    assert compare(before, after) == []


def test_plan_started_is_a_new_open_plan_and_a_new_closed_one_is_history() -> None:
    old, new = plan(), plan("LAC", start="2027-01-10", la="LA1")
    historic = plan("CPP", start="2019-01-01", end="2019-06-01")
    changes = compare([flagged(A, old)], [flagged(A, old, new, historic)])
    assert changes == [Change(A, ChangeKind.PLAN_STARTED, None, new)]


def test_plan_ended_by_an_end_date_the_record_leaving_or_the_date_passing() -> None:
    open_plan = plan()
    ended = plan(end="2027-01-10")  # ends before DAY2: not open on the current run's day
    leaving = plan("LAC", start="2026-07-01", la="LA2")
    passing = plan("CPP", start="2026-02-01", end="2027-01-10", la="LA3")  # open on DAY1, not on DAY2
    gone_history = plan("CPP", start="2018-01-01", end="2018-02-01")
    before = [flagged(A, open_plan, leaving, passing, gone_history)]
    after = [flagged(A, ended, passing)]
    assert compare(before, after) == [
        Change(A, ChangeKind.PLAN_ENDED, passing, passing),
        Change(A, ChangeKind.PLAN_ENDED, open_plan, ended),
        Change(A, ChangeKind.PLAN_ENDED, leaving, None),
    ]


def test_a_plan_that_ends_on_the_reference_date_is_still_open() -> None:
    assert plan_open(plan(end="2027-01-11"), DAY2)
    assert not plan_open(plan(end="2027-01-10"), DAY2)
    assert plan_open(plan(end=None), DAY2)
    assert plan_open(plan(end="unreadable"), DAY2)
    assert compare([flagged(A, plan())], [flagged(A, plan(end="2027-01-11"))]) == []


def test_a_reopened_plan_is_plan_started() -> None:
    ended, reopened = plan(end="2027-01-01"), plan(end=None)
    assert compare([flagged(A, ended)], [flagged(A, reopened)]) == [
        Change(A, ChangeKind.PLAN_STARTED, ended, reopened)
    ]


def test_la_changed_pairs_the_same_plan_under_another_la() -> None:
    before, after = plan(la="LA1"), plan(la="LA2")
    assert compare([flagged(A, before)], [flagged(A, after)]) == [
        Change(A, ChangeKind.LA_CHANGED, before, after)
    ]


def test_plan_type_changed_pairs_the_same_la_and_start() -> None:
    before, after = plan("CPP"), plan("LAC")
    assert compare([flagged(A, before)], [flagged(A, after)]) == [
        Change(A, ChangeKind.PLAN_TYPE_CHANGED, before, after)
    ]


def test_one_plan_can_change_twice_and_a_child_gets_a_row_for_each() -> None:
    before, after = plan(la="LA1"), plan(la="LA2", end="2027-01-05")
    assert compare([flagged(A, before)], [flagged(A, after)]) == [
        Change(A, ChangeKind.PLAN_ENDED, before, after),
        Change(A, ChangeKind.LA_CHANGED, before, after),
    ]


def test_a_change_of_la_and_type_together_is_one_plan_ending_and_another_starting() -> None:
    before, after = plan("CPP", la="LA1"), plan("LAC", la="LA2")
    assert compare([flagged(A, before)], [flagged(A, after)]) == [
        Change(A, ChangeKind.PLAN_STARTED, None, after),
        Change(A, ChangeKind.PLAN_ENDED, before, None),
    ]


def test_exact_pairs_are_taken_before_la_or_type_pairs() -> None:
    # Two identical CPPs before; after, one stays and the other moved LA: one la_changed, nothing else.
    la1, la2 = plan(la="LA1"), plan(la="LA2")
    assert compare([flagged(A, la1, la1)], [flagged(A, la2, la1)]) == [
        Change(A, ChangeKind.LA_CHANGED, la1, la2)
    ]


def test_rows_are_ordered_by_child_then_kind() -> None:
    changes = compare(
        [
            flagged(C, plan()),
            flagged(A, plan(la="LA1")),
            other(B, Outcome.NOT_FLAGGED),
            other(D, Outcome.NOT_FLAGGED),
        ],
        [other(C, Outcome.NOT_FLAGGED), flagged(D, plan()), flagged(B, plan()), flagged(A, plan(la="LA2"))],
    )
    assert [(c.nhs_number, c.change) for c in changes] == [
        (A, ChangeKind.LA_CHANGED),
        (B, ChangeKind.NEWLY_FLAGGED),
        (C, ChangeKind.NO_LONGER_FLAGGED),
        (D, ChangeKind.NEWLY_FLAGGED),
    ]


def test_change_counts_name_every_kind() -> None:
    changes = compare(
        [other(A, Outcome.NOT_FLAGGED), flagged(B, plan())],
        [flagged(A, plan(), plan("LAC")), flagged(B, plan("LAC"))],
    )
    assert change_counts(changes) == {
        "newly_flagged": 2,
        "no_longer_flagged": 0,
        "plan_started": 0,
        "plan_ended": 0,
        "plan_type_changed": 1,
        "la_changed": 0,
    }


def test_changes_frame_gives_before_after_and_both_runs() -> None:
    before, after = plan(la="LA1"), plan(la="LA2")
    previous = run("R1", DAY1, flagged(A, before))
    changes = compare_runs(previous, run("R2", DAY2, flagged(A, after)))
    expected = pl.DataFrame(
        [
            {
                "nhs_number": A,
                "change": "la_changed",
                "before_plan_type": "CPP",
                "after_plan_type": "CPP",
                "before_plan_start": "2026-05-01",
                "after_plan_start": "2026-05-01",
                "before_plan_end": None,
                "after_plan_end": None,
                "before_la_code": "LA1",
                "after_la_code": "LA2",
                "before_la_name": "LA1 Council",
                "after_la_name": "LA2 Council",
                "before_la_office_phone": "011632960000",
                "after_la_office_phone": "021632960000",
                "before_la_emergency_phone": "011632960999",
                "after_la_emergency_phone": "021632960999",
                "previous_run_id": "R1",
                "previous_reference_date": "2027-01-10",
                "run_id": "R2",
                "reference_date": "2027-01-11",
            }
        ],
        schema=CHANGE_SCHEMA,
    )
    assert changes_frame(changes, previous, "R2", DAY2).equals(expected)


def test_the_first_run_has_an_empty_frame_with_every_column() -> None:
    frame = changes_frame([], None, "R1", DAY1)
    assert frame.schema == pl.Schema(CHANGE_SCHEMA)
    assert frame.height == 0


_plans = st.lists(
    st.builds(
        plan,
        plan_type=st.sampled_from(["CPP", "LAC", "UCP", "UNKNOWN"]),
        start=st.sampled_from([None, "2026-01-01", "2027-01-11"]),
        end=st.sampled_from([None, "2026-06-01", "2027-01-10", "2027-01-11", "2028-01-01"]),
        la=st.sampled_from(["LA1", "LA2"]),
    ),
    max_size=4,
)
_children = st.lists(
    st.tuples(
        st.sampled_from([A, B, C, D]),
        st.sampled_from([Outcome.FLAGGED, Outcome.NOT_FLAGGED, Outcome.ERROR, Outcome.NO_REPLY]),
        _plans,
    ),
    unique_by=lambda t: t[0],
)


def _outcomes(children: list[tuple[str, Outcome, list[PlanRow]]]) -> list[ChildOutcome]:
    return [flagged(n, *plans) if o is Outcome.FLAGGED and plans else other(n, o) for n, o, plans in children]


@given(_children)
def test_a_run_compared_with_itself_on_the_same_day_has_no_changes(children: list) -> None:
    outcomes = _outcomes(children)
    assert compare(outcomes, outcomes, DAY2, DAY2) == []


@given(_children, _children)
def test_newly_and_no_longer_flagged_mirror_each_other(one: list, two: list) -> None:
    first, second = _outcomes(one), _outcomes(two)
    forward = [
        (c.nhs_number, c.after)
        for c in compare(first, second, DAY2, DAY2)
        if c.change is ChangeKind.NEWLY_FLAGGED
    ]
    backward = [
        (c.nhs_number, c.before)
        for c in compare(second, first, DAY2, DAY2)
        if c.change is ChangeKind.NO_LONGER_FLAGGED
    ]
    assert forward == backward


async def test_the_previous_complete_run_is_the_jobs_last_finished_one(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.sqlite") as store:

        async def begin(run_id: str, fingerprint: str, job: str = "job") -> Run:
            return await store.begin_or_resume_run(
                run_id=run_id, job_name=job, input_fingerprint=fingerprint, reference_date="2027-01-10"
            )

        first = await begin("R1", "a")
        assert await store.previous_complete_run("R1") is None
        await store.end_run("R1", RunStatus.COMPLETE)
        await begin("R2", "b")
        await store.end_run("R2", RunStatus.FAILED)
        await begin("OTHER", "c", job="another-job")
        await store.end_run("OTHER", RunStatus.COMPLETE)
        third = await begin("R3", "d")
        # Neither a failed run nor another job's run counts.
        assert await store.previous_complete_run("R3") == first
        await store.end_run("R3", RunStatus.COMPLETE)
        fourth = await begin("R4", "e")
        assert await store.previous_complete_run("R4") == Run(
            "R3", "job", "2027-01-10", third.started_at, False
        )
        await store.end_run("R4", RunStatus.COMPLETE)
        # A complete run looks back from when it finished, not from now.
        assert await store.previous_complete_run("R3") == first
        assert await store.previous_complete_run("R4") == Run(
            "R3", "job", "2027-01-10", third.started_at, False
        )
        assert fourth.run_id == "R4"


async def test_runs_finished_within_one_millisecond_are_ordered_as_they_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fast machine ends two runs' rows in the same millisecond; the later one must still see the earlier.
    monkeypatch.setattr(state_file, "utcnow", lambda: "2027-01-10T02:00:00.000+00:00")
    async with Store.open(tmp_path / "state.sqlite") as store:
        for run_id in ("R1", "R2", "R3"):
            await store.begin_or_resume_run(
                run_id=run_id, job_name="job", input_fingerprint=run_id, reference_date="2027-01-10"
            )
            await store.end_run(run_id, RunStatus.COMPLETE)
        found = [await store.previous_complete_run(run_id) for run_id in ("R1", "R2", "R3")]
    assert [run.run_id if run else None for run in found] == [None, "R1", "R2"]
