"""`summary.html`: one self-contained page for the safeguarding team.

What changed since the previous run comes first, then a chart of outcomes, the flagged children clinic by
clinic (name, date of birth, appointment, plan, local authority and its phone numbers) and the exceptions
with their reasons in plain English.

Safe by construction: the page is fixed markup from this module with every value escaped (`esc`); `el`
escapes whatever is not `Markup` this module built. Names in clinic lists are anything a spreadsheet held
(`<script>` included). There is no JavaScript, no external asset or font, and a Content-Security-Policy that
allows nothing but the inline style, so a page that somehow carried a script still could not run or fetch it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from batch.changes import ChangeKind, RunRef
from batch.reasons import OUTCOME_TEXT, explain
from batch.states import Outcome
from batch.summary import RunSummary


class PageFrames(Protocol):
    """What the page shows beyond the summary's counts: what `batch.reports.ReportStager` reads back from the
    files it staged (the tests' whole-run `ReportFrames` is one too)."""

    @property
    def flagged(self) -> pl.DataFrame: ...
    @property
    def exceptions(self) -> pl.DataFrame: ...
    @property
    def changes(self) -> pl.DataFrame: ...
    @property
    def context(self) -> pl.DataFrame: ...
    @property
    def previous(self) -> RunRef | None: ...


class Markup(str):
    """HTML this module built from fixed markup and escaped values; never escaped again."""

    __slots__ = ()


# C0/C1 control characters (but tab and line ends) are not allowed in HTML text; they show as U+FFFD.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]*\Z")
_VOID = frozenset({"meta", "br", "col"})


def esc(value: object) -> Markup:
    """Text as HTML: markup characters (quotes too) escaped, control characters replaced; None is empty."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True))


def _flatten(children: Iterable[object]) -> Iterable[object]:
    for child in children:
        if isinstance(child, list | tuple) or (
            isinstance(child, Iterable) and not isinstance(child, str | bytes | Mapping)
        ):
            yield from _flatten(child)
        else:
            yield child


def pieces(tag: str, *children: object, **attrs: object) -> Iterator[Markup]:
    """The element `el` makes, a piece at a time: children that are generators are made only as they are
    written, so a table of any length is never held whole."""
    if not _NAME.match(tag):
        raise ValueError("not an element name")
    parts = [f"<{tag}"]
    for key, value in attrs.items():
        name = key.rstrip("_").replace("_", "-")
        if not _NAME.match(name):
            raise ValueError("not an attribute name")
        if value is None or value is False:
            continue
        parts.append(f" {name}" if value is True else f' {name}="{esc(value)}"')
    parts.append(">")
    yield Markup("".join(parts))
    if tag in _VOID:
        return
    for child in _flatten(children):
        yield esc(child)
    yield Markup(f"</{tag}>")


def el(tag: str, *children: object, **attrs: object) -> Markup:
    """An element: `tag` and attribute names are fixed in this module (`class_` is `class`, `_` is `-`);
    attribute values and children are escaped unless they are Markup. None and False attributes are left out."""
    return Markup("".join(pieces(tag, *children, **attrs)))


STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  margin: 1.5rem auto; max-width: 78rem; padding: 0 1rem; color: #1b1b1b; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; border-bottom: 2px solid #005eb8; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 1.25rem 0 .4rem; }
.meta { color: #4c6272; margin: 0; }
.note { background: #fff9c4; border-left: 4px solid #ffb81c; padding: .4rem .7rem; }
.profile { background: #e8edee; border-left: 4px solid #4c6272; padding: .4rem .7rem; }
table { border-collapse: collapse; width: 100%; margin: .25rem 0 1rem; font-size: .92rem; }
th, td { text-align: left; vertical-align: top; padding: .3rem .45rem; border-bottom: 1px solid #d8dde0;
  overflow-wrap: break-word; }
td.name, td.clinic { overflow-wrap: anywhere; min-width: 6rem; }
.scroll { overflow-x: auto; }
.nowrap { white-space: nowrap; }
th { background: #f0f4f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.phone, td.nhs, td.date, td.plan { white-space: nowrap; font-variant-numeric: tabular-nums; }
.change { font-weight: 600; }
.newly_flagged, .plan_started { color: #b3261e; }
.no_longer_flagged, .plan_ended { color: #2e7d32; }
.yes { color: #b3261e; font-weight: 600; }
.code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .85rem; color: #4c6272; }
svg text { font-family: inherit; font-size: 13px; fill: #1b1b1b; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
"""

OUTCOME_LABEL = {
    Outcome.FLAGGED.value: "Flagged",
    Outcome.NOT_FLAGGED.value: "Not flagged",
    Outcome.INVALID_NHS_NUMBER.value: "Invalid NHS number",
    Outcome.ERROR.value: "Error",
    Outcome.NO_REPLY.value: "No reply",
    Outcome.OUTSIDE_WINDOW.value: "Outside the window",
}
OUTCOME_COLOUR = {
    Outcome.FLAGGED.value: "#b3261e",
    Outcome.NOT_FLAGGED.value: "#2e7d32",
    Outcome.INVALID_NHS_NUMBER.value: "#8d6e63",
    Outcome.ERROR.value: "#ef6c00",
    Outcome.NO_REPLY.value: "#f9a825",
    Outcome.OUTSIDE_WINDOW.value: "#768692",
}
_OUTCOME_ORDER = {outcome: i for i, outcome in enumerate(OUTCOME_LABEL)}
CHANGE_LABEL = {
    ChangeKind.NEWLY_FLAGGED.value: "Newly flagged",
    ChangeKind.NO_LONGER_FLAGGED.value: "No longer flagged",
    ChangeKind.PLAN_STARTED.value: "Plan started",
    ChangeKind.PLAN_ENDED.value: "Plan ended",
    ChangeKind.PLAN_TYPE_CHANGED.value: "Plan type changed",
    ChangeKind.LA_CHANGED.value: "Local authority changed",
}
PLAN_NAME = {
    "CPP": "child protection plan",
    "LAC": "looked-after child",
    "UCP": "unborn child protection plan",
    "UNKNOWN": "a plan type CP-IS did not name",
}


def _has(frame: pl.DataFrame, column: str) -> bool:
    """Whether the column holds anything (the job named it and the lists filled it)."""
    return column in frame.columns and frame.get_column(column).null_count() < frame.height


def _plan_abbr(plan_type: str | None) -> Markup:
    if plan_type is None:
        return esc(None)
    return el("abbr", plan_type, title=PLAN_NAME.get(plan_type, "plan"))


def _plan_text(row: Mapping[str, Any], side: str) -> Markup:
    """One run's side of a change: the plan and its local authority, or what there was instead."""
    plan_type = row[f"{side}_plan_type"]
    if plan_type is None:
        if row["change"] in (ChangeKind.NEWLY_FLAGGED.value, ChangeKind.NO_LONGER_FLAGGED.value):
            return esc("No CP-IS record")
        return esc("Not on the record" if side == "before" else "No longer on the record")
    start, end = row[f"{side}_plan_start"], row[f"{side}_plan_end"]
    lines = [
        Markup(
            f"{_plan_abbr(plan_type)} from {el('span', start or 'an unknown date', class_='nowrap')}"
            + (f" to {el('span', end, class_='nowrap')}" if end else ", no end date")
        ),
        Markup(f"{esc(row[f'{side}_la_name'])} {el('span', row[f'{side}_la_code'], class_='code')}"),
        Markup(
            f"Office {el('span', row[f'{side}_la_office_phone'] or '-', class_='nowrap')},"
            f" emergency {el('span', row[f'{side}_la_emergency_phone'] or '-', class_='nowrap')}"
        ),
    ]
    return Markup(el("br").join(lines))


@dataclass(frozen=True)
class _Shown:
    """Which optional columns a table shows: only those the job names and the lists fill."""

    name: bool
    birth: bool
    clinic: bool

    @classmethod
    def of(cls, frame: pl.DataFrame) -> _Shown:
        return cls(_has(frame, "patient_name"), _has(frame, "date_of_birth"), _has(frame, "clinic"))

    def person_heads(self) -> list[Markup]:
        return [
            el("th", "Name") if self.name else Markup(),
            el("th", "Date of birth") if self.birth else Markup(),
            el("th", "NHS number"),
        ]

    def person(self, row: Mapping[str, Any]) -> list[Markup]:
        return [
            el("td", row["patient_name"], class_="name") if self.name else Markup(),
            el("td", row["date_of_birth"], class_="date") if self.birth else Markup(),
            el("td", row["nhs_number"], class_="nhs"),
        ]

    def clinic_head(self) -> Markup:
        return el("th", "Clinic") if self.clinic else Markup()

    def clinic_cell(self, row: Mapping[str, Any]) -> Markup:
        return el("td", row["clinic"], class_="clinic") if self.clinic else Markup()


def _table(head: list[Markup], rows: Iterable[Markup], class_: str) -> Iterator[Markup]:
    table = pieces("table", el("thead", el("tr", head)), pieces("tbody", rows), class_=class_)
    return pieces("div", table, class_="scroll")


def _run_of(run: RunRef) -> str:
    return f"the run of {run.reference_date.isoformat()} (run {run.run_id[:8]})"


def _changes(frames: PageFrames) -> Markup:
    previous, changes = frames.previous, frames.changes
    if previous is None:
        body = [el("p", "This is the job's first complete run, so there is nothing to compare with yet.")]
    elif changes.height == 0:
        body = [el("p", f"No child's CP-IS status changed since {_run_of(previous)}.")]
    else:
        shown = _Shown.of(changes)
        head = [
            *shown.person_heads(),
            shown.clinic_head(),
            el("th", "Change"),
            el("th", "Before"),
            el("th", "Now"),
        ]
        rows = [
            el(
                "tr",
                shown.person(row),
                shown.clinic_cell(row),
                el("td", CHANGE_LABEL.get(row["change"], row["change"]), class_=f"change {row['change']}"),
                el("td", _plan_text(row, "before")),
                el("td", _plan_text(row, "after")),
                class_="change-row",
                data_change=row["change"],
                data_nhs_number=row["nhs_number"],
            )
            for row in changes.iter_rows(named=True)
        ]
        n = changes.height
        body = [
            el("p", f"Compared with {_run_of(previous)}: {n} change{'' if n == 1 else 's'}."),
            Markup("".join(_table(head, rows, "changes"))),
        ]
    return el(
        "section",
        el("h2", "Changes since the previous run"),
        body,
        id="changes",
        data_first_run="true" if previous is None else "false",
        data_count=changes.height,
    )


def _chart(counts: Mapping[str, int]) -> Markup:
    """A horizontal bar per outcome, as inline SVG (no script, no external font)."""
    items = [(outcome, counts.get(outcome, 0)) for outcome in OUTCOME_LABEL]
    most = max((n for _, n in items), default=0) or 1
    label_w, bar_w, row_h, bar_h = 170, 420, 30, 20
    width, height = label_w + bar_w + 80, row_h * len(items) + 10
    bars = []
    for i, (outcome, n) in enumerate(items):
        y = 5 + i * row_h
        length = round(bar_w * n / most, 1)
        bars.append(
            el(
                "g",
                el("text", OUTCOME_LABEL[outcome], x=label_w - 8, y=y + 15, text_anchor="end"),
                el("rect", x=label_w, y=y, width=length, height=bar_h, fill=OUTCOME_COLOUR[outcome]),
                el("text", n, x=label_w + length + 6, y=y + 15),
                data_outcome=outcome,
            )
        )
    return el(
        "svg",
        el("title", "Input rows by outcome"),
        bars,
        xmlns="http://www.w3.org/2000/svg",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
        aria_label="Input rows by outcome",
        id="outcome-chart",
    )


def _outcomes(summary: RunSummary) -> Markup:
    rows = [
        el(
            "tr",
            el("td", OUTCOME_LABEL.get(outcome, outcome)),
            el("td", OUTCOME_TEXT.get(outcome, "")),
            el("td", n, class_="num"),
            data_outcome=outcome,
        )
        for outcome, n in sorted(summary.outcomes.items(), key=lambda item: _OUTCOME_ORDER.get(item[0], 99))
    ]
    head = el("tr", el("th", "Outcome"), el("th", "Meaning"), el("th", "Rows", class_="num"))
    return el(
        "section",
        el("h2", "Outcomes"),
        el("p", f"{summary.rows} input rows, {summary.distinct_children} distinct children queried."),
        _chart(summary.outcomes),
        el("table", el("thead", head), el("tbody", rows)),
        id="outcomes",
    )


def _with_context(rows: pl.DataFrame, context: pl.DataFrame) -> pl.DataFrame:
    """`rows` with the context of each (`source_file`, `source_row`, one context row each) beside it, as a left
    join names it, without copying `rows`: a run's flagged rows are tens of thousands."""
    on = ["source_file", "source_row"]
    found = rows.select(on).join(context, on=on, how="left", maintain_order="left").drop(on)
    found = found.rename({name: f"{name}_right" for name in found.columns if name in rows.columns})
    return pl.concat([rows, found], how="horizontal")


@dataclass(frozen=True)
class _Group:
    title: str
    rows: pl.DataFrame
    order: pl.Series
    """Positions in `rows` of this group's rows, in the order shown."""

    def children(self) -> int:
        return self.rows.get_column("nhs_number").gather(self.order).n_unique()

    def iter_rows(self, batch: int = 1_000) -> Iterator[dict[str, Any]]:
        # Taken a batch at a time: a run's flagged rows are never copied whole to sort them.
        for start in range(0, self.order.len(), batch):
            yield from self.rows[self.order.slice(start, batch)].iter_rows(named=True)


def _groups(frame: pl.DataFrame, shown: _Shown, order: list[str]) -> list[_Group]:
    """Rows by clinic when the lists name one, else by list file (its name without the folder), each group's
    rows by `order`."""
    if shown.clinic:
        key, what = pl.col("clinic"), "Clinic"
    else:
        key, what = pl.col("source_file").str.extract(r"([^/]*)$"), "List"
    keyed = frame.select(key.alias("_group"), *order)
    index = keyed.select(
        pl.arg_sort_by(["_group", *order], nulls_last=True, maintain_order=True).alias("_index")
    ).to_series()
    names = keyed.get_column("_group").gather(index)
    groups, start = [], 0
    for name, n in names.to_frame().group_by("_group", maintain_order=True).len().iter_rows():
        title = "No clinic given" if name is None else f"{what}: {name}"
        groups.append(_Group(title, frame, index.slice(start, n)))
        start += n
    return groups


def _children(n: int) -> str:
    return f"{n} {'child' if n == 1 else 'children'}"


def _flagged(frames: PageFrames, reference_date: str) -> Iterator[Markup]:
    flagged = _with_context(frames.flagged, frames.context)
    shown = _Shown.of(flagged)
    appointment = _has(flagged, "appointment_date")
    head = [
        *shown.person_heads(),
        el("th", "Appointment") if appointment else Markup(),
        el("th", "Plan"),
        el("th", "Start"),
        el("th", "End"),
        el("th", "Active on appointment" if appointment else f"Active on {reference_date}"),
        el("th", "Local authority"),
        el("th", "Office phone"),
        el("th", "Emergency phone"),
    ]
    order = ["appointment_date", "patient_name", "source_file", "source_row", "plan_start"]

    def rows(group: _Group) -> Iterator[Markup]:
        # A row at a time as the page is written: a run can flag tens of thousands of children.
        for row in group.iter_rows():
            yield el(
                "tr",
                shown.person(row),
                el("td", row["appointment_date"], class_="date") if appointment else None,
                el("td", _plan_abbr(row["plan_type"]), class_="plan"),
                el("td", row["plan_start"], class_="date"),
                el("td", row["plan_end"], class_="date"),
                el(
                    "td",
                    "Yes" if row["plan_active_on_appointment"] else "No",
                    class_="yes" if row["plan_active_on_appointment"] else None,
                ),
                el("td", row["la_name"], " ", el("span", row["la_code"], class_="code")),
                el("td", row["la_office_phone"], class_="phone la-office-phone"),
                el("td", row["la_emergency_phone"], class_="phone la-emergency-phone"),
                class_="plan-row",
                data_nhs_number=row["nhs_number"],
            )

    def content(groups: list[_Group]) -> Iterator[Markup | Iterator[Markup]]:
        for group in groups:
            yield el("h3", f"{group.title} ({_children(group.children())})")
            yield _table(head, rows(group), "flagged")

    groups = _groups(flagged, shown, order)
    children = flagged.get_column("nhs_number").n_unique()
    return pieces(
        "section",
        el("h2", "Flagged children: ", el("span", children, id="flagged-count")),
        el(
            "p",
            "One row per plan. CPP: child protection plan; LAC: looked-after child; UCP: unborn child"
            " protection plan. Call the local authority before the appointment where the plan is active.",
            class_="meta",
        ),
        content(groups) if groups else el("p", "No child on these lists is flagged on CP-IS."),
        id="flagged",
        data_count=children,
    )


# A list with a wrong column or a spreadsheet that mangled every number can make every row an exception; the
# page lists the first ones (exceptions.csv has them all) instead of growing without bound.
EXCEPTION_ROWS_SHOWN = 2_000


def _exceptions(frames: PageFrames) -> Markup:
    exceptions = _with_context(frames.exceptions, frames.context)
    shown = _Shown.of(exceptions)
    head = [
        shown.clinic_head(),
        *shown.person_heads(),
        el("th", "List and row"),
        el("th", "Outcome"),
        el("th", "What happened"),
    ]
    rows = [
        el(
            "tr",
            shown.clinic_cell(row),
            shown.person(row),
            el("td", row["source_file"].rpartition("/")[2], ", row ", row["source_row"]),
            el("td", OUTCOME_LABEL.get(row["outcome"], row["outcome"])),
            el("td", explain(row["outcome"], row["reason"]), " ", el("span", row["reason"], class_="code")),
            class_="exception-row",
            data_outcome=row["outcome"],
        )
        for row in exceptions.sort("clinic", "source_file", "source_row", nulls_last=True)
        .head(EXCEPTION_ROWS_SHOWN)
        .iter_rows(named=True)
    ]
    more = exceptions.height - len(rows)
    content = (
        [
            el(
                "p",
                "These rows have no CP-IS answer: correct the list, or check the child's status another way"
                " before the appointment.",
                class_="note",
            ),
            _table(head, rows, "exceptions"),
            el("p", f"And {more} more rows: every one is in exceptions.csv.", class_="note")
            if more
            else None,
        ]
        if rows
        else [el("p", "None: every row has a CP-IS answer or was left out on purpose.")]
    )
    return el(
        "section",
        el("h2", "Exceptions: ", el("span", exceptions.height, id="exception-count")),
        content,
        id="exceptions",
        data_count=exceptions.height,
    )


def summary_html_pieces(frames: PageFrames, summary: RunSummary) -> Iterator[str]:
    """The whole page, a piece at a time, to be written as it is made."""
    title = f"CP-IS pre-check: {summary.job}, {summary.reference_date}"
    profile = (
        el("p", f"Profile {summary.profile}: test data, not real patients.", class_="profile")
        if summary.profile != "live"
        else None
    )
    head = el(
        "head",
        el("meta", charset="utf-8"),
        el(
            "meta",
            http_equiv="Content-Security-Policy",
            content="default-src 'none'; style-src 'unsafe-inline'",
        ),
        el("meta", name="referrer", content="no-referrer"),
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("title", title),
        el("style", Markup(STYLE)),
    )
    body = pieces(
        "body",
        el(
            "header",
            el("h1", title),
            el(
                "p",
                f"Run {summary.run_id} · finished {summary.finished_at} · {summary.rows} rows",
                class_="meta",
            ),
            profile,
        ),
        pieces(
            "main",
            _changes(frames),
            _outcomes(summary),
            _flagged(frames, summary.reference_date),
            _exceptions(frames),
        ),
    )
    yield "<!DOCTYPE html>\n"
    yield from pieces("html", head, body, lang="en")
    yield "\n"
