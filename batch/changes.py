"""What changed in each child's CP-IS status since the previous complete run of the same job.

A pure comparison of two runs' typed outcomes (`compare_runs`); `changes_frame` lays the result out as the
`changes.parquet`/`changes.csv` rows. The rules, which README's "Reading the reports" repeats:

- Only a child with a definite answer in **both** runs is compared: `flagged` or `not_flagged` in each. A child
  missing from either run (not on that night's lists, an invalid NHS number, outside the appointment window)
  or whose query ended `error` or `no_reply` in either has no known status to compare, so never appears.
- `newly_flagged`: `not_flagged` before, `flagged` now; one row per plan now held (before values empty).
- `no_longer_flagged`: `flagged` before, `not_flagged` now; one row per plan held before (after values empty).
- A child `flagged` in both runs has its plans paired, in three passes, each pairing plans left unpaired by
  the passes before it: (1) same LA code, plan type and start: the same plan; (2) same plan type and start,
  another LA code: `la_changed`; (3) same LA code and start, another plan type: `plan_type_changed`.
  A plan is *open* on a day when it has no end date or ends on or after that day; each run is judged on its
  own reference date. For every pair: open before and not open now is `plan_ended`; not open before and open
  now (an end date removed or moved later) is `plan_started`. An unpaired plan of this run that is open is
  `plan_started`; an unpaired plan of the previous run that was open is `plan_ended` (it left the record).
  Unpaired plans that are not open (already ended) are history, not a change. A pair can give two rows (for
  example `la_changed` and `plan_ended`).

Rows are ordered by NHS number, then change kind in the order of `ChangeKind`, then plan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import polars as pl

from batch.states import Outcome
from batch.store import ChildOutcome, PlanRow, outcomes_of_frame


class ChangeKind(StrEnum):
    NEWLY_FLAGGED = "newly_flagged"
    NO_LONGER_FLAGGED = "no_longer_flagged"
    PLAN_STARTED = "plan_started"
    PLAN_ENDED = "plan_ended"
    PLAN_TYPE_CHANGED = "plan_type_changed"
    LA_CHANGED = "la_changed"


# The answers that say what CP-IS holds; any other outcome leaves the child's status unknown.
DEFINITE = (Outcome.FLAGGED, Outcome.NOT_FLAGGED)

# The plan fields each change row gives before and after.
PLAN_FIELDS = (
    "plan_type",
    "plan_start",
    "plan_end",
    "la_code",
    "la_name",
    "la_office_phone",
    "la_emergency_phone",
)
CHANGE_SCHEMA: dict[str, pl.DataType] = {
    "nhs_number": pl.String(),
    "change": pl.String(),
    **{f"{side}_{name}": pl.String() for name in PLAN_FIELDS for side in ("before", "after")},
    "previous_run_id": pl.String(),
    "previous_reference_date": pl.String(),
    "run_id": pl.String(),
    "reference_date": pl.String(),
}


@dataclass(frozen=True)
class RunRef:
    """A run the changes are counted from: what the reports say of it."""

    run_id: str
    reference_date: date


@dataclass(frozen=True)
class RunOutcomes(RunRef):
    """One run's side of the comparison: its id, reference date and its children's outcomes, as an outcome
    frame (`batch.store.OUTCOME_FRAME_SCHEMA`; `frame_of_outcomes` makes one from typed records). Every child
    of the run, or a page of them beside the same children of the other run: each child is compared alone."""

    outcomes: pl.DataFrame


@dataclass(frozen=True)
class Change:
    """One change for one child; `before`/`after` is the plan concerned in each run (None: none there)."""

    nhs_number: str
    change: ChangeKind
    before: PlanRow | None
    after: PlanRow | None


def _day(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def plan_open(plan: PlanRow, on: date) -> bool:
    """No end date (or none readable), or an end on or after `on`."""
    end = _day(plan.plan_end)
    return end is None or end >= on


def _plan_order(plan: PlanRow) -> tuple[str, ...]:
    return (
        plan.plan_start or "",
        plan.plan_type,
        plan.la_code or "",
        plan.plan_end or "",
        plan.la_name or "",
        plan.subject_kind,
    )


def _plans(outcome: ChildOutcome) -> list[PlanRow]:
    return sorted(outcome.result.plans if outcome.result is not None else (), key=_plan_order)


def _or_none(plans: list[PlanRow]) -> list[PlanRow | None]:
    return [*plans] if plans else [None]


_Key = Callable[[PlanRow], Hashable]
_PASSES: tuple[tuple[_Key, ChangeKind | None], ...] = (
    (lambda p: (p.la_code, p.plan_type, p.plan_start), None),
    (lambda p: (p.plan_type, p.plan_start), ChangeKind.LA_CHANGED),
    (lambda p: (p.la_code, p.plan_start), ChangeKind.PLAN_TYPE_CHANGED),
)


def _pair(
    before: list[PlanRow], after: list[PlanRow], key: _Key
) -> tuple[list[tuple[PlanRow, PlanRow]], list[PlanRow], list[PlanRow]]:
    """Pairs of plans with equal keys (first come, first paired), and what is left on each side."""
    pairs: list[tuple[PlanRow, PlanRow]] = []
    left_after = list(after)
    left_before: list[PlanRow] = []
    for old in before:
        match = next((i for i, new in enumerate(left_after) if key(new) == key(old)), None)
        if match is None:
            left_before.append(old)
        else:
            pairs.append((old, left_after.pop(match)))
    return pairs, left_before, left_after


def _plan_changes(
    nhs_number: str, then: ChildOutcome, now: ChildOutcome, was: date, is_: date
) -> list[Change]:
    before, after = _plans(then), _plans(now)
    changes: list[Change] = []
    for key, kind in _PASSES:
        pairs, before, after = _pair(before, after, key)
        for old, new in pairs:
            if kind is not None:
                changes.append(Change(nhs_number, kind, old, new))
            was_open, is_open = plan_open(old, was), plan_open(new, is_)
            if was_open and not is_open:
                changes.append(Change(nhs_number, ChangeKind.PLAN_ENDED, old, new))
            elif is_open and not was_open:
                changes.append(Change(nhs_number, ChangeKind.PLAN_STARTED, old, new))
    changes += [
        Change(nhs_number, ChangeKind.PLAN_STARTED, None, new) for new in after if plan_open(new, is_)
    ]
    changes += [Change(nhs_number, ChangeKind.PLAN_ENDED, old, None) for old in before if plan_open(old, was)]
    return changes


def _sort_key(change: Change) -> tuple[str, int, tuple[str, ...], tuple[str, ...]]:
    # By the plan concerned: this run's where there is one, else the previous run's.
    concerned = change.after or change.before
    return (
        change.nhs_number,
        _KIND_ORDER[change.change],
        _plan_order(concerned) if concerned is not None else (),
        _plan_order(change.before) if change.before is not None else (),
    )


_KIND_ORDER = {kind: index for index, kind in enumerate(ChangeKind)}


def _candidates(previous: RunOutcomes, current: RunOutcomes) -> tuple[list[ChildOutcome], list[ChildOutcome]]:
    """The children whose status may have changed, typed; every other child is left as columns.

    Compared further: a child with a definite answer in both runs, flagged in at least one, whose plans differ
    or one of whose plans has its end date between the two reference dates (ended in between). Most children
    are in neither case, so a run of any size builds records only for what changed.
    """
    plans = pl.col("result_json").str.json_path_match("$.plans")
    ends = pl.col("result_json").str.extract_all(r'"plan_end": "(\d{4}-\d{2}-\d{2})')
    definite = [o.value for o in DEFINITE]
    flagged = Outcome.FLAGGED.value
    pairs = (
        current.outcomes.lazy()
        .filter(pl.col("outcome").is_in(definite))
        .join(
            previous.outcomes.lazy().filter(pl.col("outcome").is_in(definite)),
            on="nhs_number",
            how="inner",
            suffix="_before",
        )
        .filter((pl.col("outcome") == flagged) | (pl.col("outcome_before") == flagged))
        .with_columns(
            plans.alias("plans"),
            pl.col("result_json_before").str.json_path_match("$.plans").alias("plans_before"),
            pl.concat_list(
                ends, pl.col("result_json_before").str.extract_all(r'"plan_end": "(\d{4}-\d{2}-\d{2})')
            )
            .list.eval(
                pl.element()
                .str.slice(-10)
                .str.to_date(strict=False)
                .is_between(previous.reference_date, current.reference_date, closed="left")
            )
            .list.any()
            .alias("ended_between"),
        )
        .filter(
            (pl.col("outcome") != pl.col("outcome_before"))
            | pl.col("plans").ne_missing(pl.col("plans_before"))
            | pl.col("ended_between")
        )
        .collect()
    )
    columns = list(current.outcomes.columns)
    now = pairs.select(columns)
    then = pairs.select("nhs_number", *(pl.col(f"{c}_before").alias(c) for c in columns if c != "nhs_number"))
    return outcomes_of_frame(then), outcomes_of_frame(now)


def sorted_changes(changes: Iterable[Change]) -> list[Change]:
    """Changes in report order (`compare_runs` gives them so; changes of several pages are sorted again)."""
    return sorted(changes, key=_sort_key)


def compare_runs(previous: RunOutcomes, current: RunOutcomes) -> list[Change]:
    """Every change from `previous` to `current`, by the rules in this module's docstring, in report order."""
    then_records, now_records = _candidates(previous, current)
    before = {o.nhs_number: o for o in then_records}
    changes: list[Change] = []
    for now in now_records:
        then = before[now.nhs_number]
        was_flagged, is_flagged = then.outcome is Outcome.FLAGGED, now.outcome is Outcome.FLAGGED
        nhs = now.nhs_number
        # A flagged answer always holds a plan (else it is `error`); were one without, the child still shows.
        if is_flagged and not was_flagged:
            changes += [Change(nhs, ChangeKind.NEWLY_FLAGGED, None, p) for p in _or_none(_plans(now))]
        elif was_flagged and not is_flagged:
            changes += [Change(nhs, ChangeKind.NO_LONGER_FLAGGED, p, None) for p in _or_none(_plans(then))]
        elif is_flagged:
            changes += _plan_changes(nhs, then, now, previous.reference_date, current.reference_date)
    return sorted_changes(changes)


def change_counts(changes: Sequence[Change]) -> dict[str, int]:
    """Rows per change kind, every kind present."""
    counts = {kind.value: 0 for kind in ChangeKind}
    for change in changes:
        counts[change.change.value] += 1
    return counts


def _fields(plan: PlanRow | None) -> list[str | None]:
    return [None if plan is None else getattr(plan, name) for name in PLAN_FIELDS]


def changes_frame(
    changes: Sequence[Change], previous: RunRef | None, run_id: str, reference_date: date
) -> pl.DataFrame:
    """The `changes` report: one row per change (empty, with every column, on a job's first run)."""
    rows = []
    for change in changes:
        assert previous is not None  # there are no changes without a previous run
        before, after = _fields(change.before), _fields(change.after)
        paired = [value for pair in zip(before, after, strict=True) for value in pair]
        rows.append(
            (
                change.nhs_number,
                change.change.value,
                *paired,
                previous.run_id,
                previous.reference_date.isoformat(),
                run_id,
                reference_date.isoformat(),
            )
        )
    return pl.DataFrame(rows, schema=CHANGE_SCHEMA, orient="row")
