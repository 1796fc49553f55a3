"""summary.html: self-contained, every value escaped, changes first, flagged children by clinic, exceptions
explained; and the same page however few columns a job names."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace
from datetime import date
from pathlib import Path

import lxml.html
import polars as pl
import pytest

from batch import summary_html
from batch.changes import RunOutcomes
from batch.patients import InputSpec, read_patient_lists
from batch.reasons import explain
from batch.states import Outcome
from batch.store import ChildOutcome, FlagResult, PlanRow, frame_of_outcomes
from batch.summary import RunSummary
from batch.summary_html import el, esc
from tests.browser import paeth, read_png
from tests.expectations import run_summary
from tests.report_frames import ReportFrames, build_reports, render_summary_html

A, B, C, D = "9990000018", "9990000026", "9990000034", "9990000042"
DAY1, DAY2 = date(2027, 1, 10), date(2027, 1, 11)
HOSTILE = '<script>alert("x")</script>'
ATTRIBUTE = '"><img src=x onerror=alert(1)>'


def plan(plan_type: str = "CPP", la: str = "LA1", end: str | None = None) -> PlanRow:
    return PlanRow(
        plan_type,
        "2026-05-01",
        end,
        la,
        f"{la} & Sons Council",
        f"0{la[-1]}16329600",
        "+441632960999",
        "child",
    )


def flagged(nhs: str, *plans: PlanRow) -> ChildOutcome:
    return ChildOutcome(
        nhs, Outcome.FLAGGED, None, FlagResult(plans, 0, 1, None, None), 1, "M", "2027-01-11T01:00"
    )


def answered(nhs: str, outcome: Outcome, reason: str | None = None) -> ChildOutcome:
    return ChildOutcome(nhs, outcome, reason, None, 1, None, None)


NOW = [
    flagged(A, plan(la="LA2")),
    answered(B, Outcome.ERROR, "QUQI:XX1+XX2"),
    flagged(C, plan("LAC")),
    answered(D, Outcome.NOT_FLAGGED),
]
BEFORE = RunOutcomes(
    "PREVIOUS-RUN",
    DAY1,
    frame_of_outcomes(
        (flagged(A, plan()), answered(C, Outcome.NOT_FLAGGED), answered(D, Outcome.NOT_FLAGGED))
    ),
)


def _patients(tmp_path: Path, *, context: bool) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "NHS No": [A, B, "123", C, D],
            "Name": [HOSTILE, ATTRIBUTE, "Cy & Co", "Di\x07\x0bna", "Ed"],
            "DOB": ["01/02/2020", "02/03/2021", "03/04/2019", None, "05/06/2018"],
            "Clinic": ["<b>Eye</b>", "<b>Eye</b>", "Ear", None, "Ear"],
            "Appointment Date": ["2027-01-12", "2027-01-13", "2027-01-12", "2027-01-14", None],
        }
    )
    frame.write_csv(tmp_path / "clinic-list.csv")
    spec = (
        InputSpec(
            "NHS No",
            "Appointment Date",
            clinic_column="Clinic",
            name_column="Name",
            date_of_birth_column="DOB",
        )
        if context
        else InputSpec("NHS No")
    )
    return read_patient_lists([tmp_path / "clinic-list.csv"], spec)


def _frames(tmp_path: Path, *, context: bool = True, previous: RunOutcomes | None = BEFORE) -> ReportFrames:
    return build_reports(
        _patients(tmp_path, context=context),
        frame_of_outcomes(NOW),
        DAY2,
        run_id="THIS-RUN",
        previous=previous,
    )


def _summary(frames: ReportFrames) -> RunSummary:
    return run_summary(frames, job="nightly <clinics>", reference_date=DAY2, children=4)


def _page(frames: ReportFrames) -> tuple[str, lxml.html.HtmlElement]:
    text = render_summary_html(frames, _summary(frames))
    return text, lxml.html.document_fromstring(text)


def _texts(doc: lxml.html.HtmlElement, xpath: str) -> list[str]:
    return [node.text_content() for node in doc.xpath(xpath)]


def test_the_summary_survives_json(tmp_path: Path) -> None:
    summary = _summary(_frames(tmp_path))
    assert summary.changes == {
        "newly_flagged": 1,
        "no_longer_flagged": 0,
        "plan_started": 0,
        "plan_ended": 0,
        "plan_type_changed": 0,
        "la_changed": 1,
    }
    assert RunSummary.from_json(summary.to_json()) == summary
    assert RunSummary.from_json(replace(summary, changes="first_run").to_json()).changes == "first_run"
    # A summary written by a later version may hold more keys, at the top and in this_process.
    newer = json.loads(summary.to_json())
    newer["something_new"] = 1
    newer["this_process"]["also_new"] = 2
    assert RunSummary.from_json(json.dumps(newer)) == summary


def test_every_value_is_escaped_and_nothing_can_run(tmp_path: Path) -> None:
    text, doc = _page(_frames(tmp_path))
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert not doc.xpath("//script | //img | //iframe | //object | //embed | //link | //base | //form")
    assert not [a for node in doc.iter() for a in node.attrib if a.lower().startswith("on")]
    names = _texts(doc, "//td[@class='name']")
    assert HOSTILE in names and ATTRIBUTE in names
    assert "Di\ufffd\ufffdna" in names  # control characters are not HTML text
    assert "<b>Eye</b>" in _texts(doc, "//h3")[0]
    assert _texts(doc, "//head/title") == ["CP-IS pre-check: nightly <clinics>, 2027-01-11"]


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    text, doc = _page(_frames(tmp_path))
    assert not [a for node in doc.iter() for a in node.attrib if a in ("src", "href", "srcset", "action")]
    style = "".join(_texts(doc, "//style"))
    assert "url(" not in style and "@import" not in style
    csp = doc.xpath("//meta[@http-equiv='Content-Security-Policy']/@content")
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'"]
    assert text.startswith('<!DOCTYPE html>\n<html lang="en">')


def test_changes_come_first_then_outcomes_flagged_and_exceptions(tmp_path: Path) -> None:
    _, doc = _page(_frames(tmp_path))
    assert doc.xpath("//main/section/@id") == ["changes", "outcomes", "flagged", "exceptions"]
    changes = doc.xpath("//tr[@class='change-row']")
    assert [(tr.get("data-nhs-number"), tr.get("data-change")) for tr in changes] == [
        (A, "la_changed"),
        (C, "newly_flagged"),
    ]
    before, now = changes[0].xpath("td")[-2:]
    assert "LA1 & Sons Council" in before.text_content() and "LA2 & Sons Council" in now.text_content()
    assert "No CP-IS record" in changes[1].xpath("td")[-2].text_content()


def test_the_chart_has_a_bar_per_outcome(tmp_path: Path) -> None:
    frames = _frames(tmp_path)
    _, doc = _page(frames)
    bars = {g.get("data-outcome"): g for g in doc.xpath("//svg[@id='outcome-chart']/g")}
    assert set(bars) == {o.value for o in Outcome}
    counts = frames.outcome_counts()
    assert {o: int(g.xpath("text")[-1].text) for o, g in bars.items()} == counts
    widths = {o: float(g.xpath("rect/@width")[0]) for o, g in bars.items()}
    assert widths["flagged"] == max(widths.values()) > 0 and widths["no_reply"] == 0


def test_flagged_children_by_clinic_with_the_la_phones(tmp_path: Path) -> None:
    _, doc = _page(_frames(tmp_path))
    assert doc.xpath("string(//span[@id='flagged-count'])") == "2"
    assert _texts(doc, "//section[@id='flagged']/h3") == [
        "Clinic: <b>Eye</b> (1 child)",
        "No clinic given (1 child)",
    ]
    heads = _texts(doc, "//section[@id='flagged']//table[1]//th")
    assert heads[:4] == ["Name", "Date of birth", "NHS number", "Appointment"]
    rows = [
        [td.text_content() for td in tr.xpath("td")]
        for tr in doc.xpath("//section[@id='flagged']//tr[@data-nhs-number]")
    ]
    assert rows == [
        [
            HOSTILE,
            "01/02/2020",
            A,
            "2027-01-12",
            "CPP",
            "2026-05-01",
            "",
            "Yes",
            "LA2 & Sons Council LA2",
            "0216329600",
            "+441632960999",
        ],
        [
            "Di\ufffd\ufffdna",
            "",
            C,
            "2027-01-14",
            "LAC",
            "2026-05-01",
            "",
            "Yes",
            "LA1 & Sons Council LA1",
            "0116329600",
            "+441632960999",
        ],
    ]


def test_exceptions_say_what_happened_in_plain_english(tmp_path: Path) -> None:
    _, doc = _page(_frames(tmp_path))
    rows = doc.xpath("//tr[@class='exception-row']")
    # By clinic ("<b>Eye</b>" sorts before "Ear"), then list and row.
    assert [tr.get("data-outcome") for tr in rows] == ["error", "invalid_nhs_number"]
    assert [td.text_content() for td in rows[0].xpath("td")] == [
        "<b>Eye</b>",
        ATTRIBUTE,
        "02/03/2021",
        B,
        "clinic-list.csv, row 2",
        "Error",
        f"{explain('error', 'QUQI:XX1+XX2')} QUQI:XX1+XX2",
    ]
    assert (
        rows[1].xpath("td")[-1].text_content()
        == f"{explain('invalid_nhs_number', 'not_10_digits')} not_10_digits"
    )
    assert doc.xpath("string(//span[@id='exception-count'])") == "2"


@pytest.mark.parametrize(
    ("previous", "message"), [(None, "first complete run"), ("same", "No child's CP-IS status changed")]
)
def test_first_run_and_no_changes_say_so(tmp_path: Path, previous: str | None, message: str) -> None:
    before = None if previous is None else RunOutcomes("PREVIOUS-RUN", DAY2, frame_of_outcomes(NOW))
    _, doc = _page(_frames(tmp_path, previous=before))
    section = doc.xpath("//section[@id='changes']")[0]
    assert message in section.text_content()
    assert section.get("data-first-run") == ("true" if previous is None else "false")
    assert not section.xpath(".//table")


def test_without_clinic_name_birth_or_appointment_columns_the_page_still_works(tmp_path: Path) -> None:
    _, doc = _page(_frames(tmp_path, context=False))
    heads = _texts(doc, "//section[@id='flagged']//table[1]//th")
    assert heads == [
        "NHS number",
        "Plan",
        "Start",
        "End",
        "Active on 2027-01-11",
        "Local authority",
        "Office phone",
        "Emergency phone",
    ]
    assert _texts(doc, "//section[@id='flagged']/h3") == ["List: clinic-list.csv (2 children)"]
    assert _texts(doc, "//section[@id='exceptions']//th") == [
        "NHS number",
        "List and row",
        "Outcome",
        "What happened",
    ]
    assert _texts(doc, "//section[@id='changes']//th") == ["NHS number", "Change", "Before", "Now"]


def test_the_builder_escapes_what_it_did_not_build() -> None:
    assert (
        el("td", "<i>", el("b", "&"), title='"x"') == '<td title="&quot;x&quot;">&lt;i&gt;<b>&amp;</b></td>'
    )
    assert esc(None) == "" and esc(3) == "3"
    with pytest.raises(ValueError, match="not an element name"):
        el("td onclick=x")
    with pytest.raises(ValueError, match="not an attribute name"):
        el("td", **{"on click": "x"})


def _png(rows: list[bytes], width: int, filters: list[int]) -> bytes:
    """An RGB PNG whose rows are stored with the given filter types (PNG specification section 9 filters)."""
    channels, raw, previous = 3, bytearray(), bytes(width * 3)
    for row, kind in zip(rows, filters, strict=True):
        out = bytearray([kind])
        for i, x in enumerate(row):
            left = row[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            predictor = [0, left, up, (left + up) >> 1, paeth(left, up, corner)][kind]
            out.append((x - predictor) & 0xFF)
        raw += out
        previous = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def test_the_png_reader_undoes_every_filter() -> None:
    rows = [bytes((x * 37 + y * 91 + c * 13) % 256 for x in range(4) for c in range(3)) for y in range(5)]
    pixels = read_png(_png(rows, 4, [0, 1, 2, 3, 4]))
    assert (pixels.width, pixels.height, pixels.rows) == (4, 5, rows)
    assert pixels.distinct() == {row[i : i + 3] for row in rows for i in range(0, 12, 3)}
    blank = read_png(_png([bytes(12)] * 2, 4, [1, 2]))
    assert blank.distinct() == {b"\x00\x00\x00"} and blank.share_unlike(b"\x00\x00\x00") == 0
    with pytest.raises(ValueError, match="not a PNG"):
        read_png(b"GIF89a")


def test_a_list_of_exceptions_too_long_to_read_is_cut_and_says_where_the_rest_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(summary_html, "EXCEPTION_ROWS_SHOWN", 1)
    _, doc = _page(_frames(tmp_path))
    assert len(doc.xpath("//tr[@class='exception-row']")) == 1
    assert doc.xpath("string(//span[@id='exception-count'])") == "2"
    assert "And 1 more rows: every one is in exceptions.csv." in _texts(doc, "//section[@id='exceptions']/p")


def test_context_set_beside_the_rows_is_what_a_left_join_gives() -> None:
    # The page sets each row's context beside it instead of joining (a copy of every flagged row); a name the
    # rows have already gets the join's `_right`, as before.
    rows = pl.DataFrame(
        {"source_file": ["a", "a", "b"], "source_row": [2, 1, 1], "clinic": ["x", "y", "z"], "v": [1, 2, 3]}
    )
    context = pl.DataFrame(
        {
            "source_file": ["b", "a", "a", "c"],
            "source_row": [1, 1, 2, 9],
            "clinic": ["C", "A", "B", "D"],
            "patient_name": ["n3", "n1", "n2", "n4"],
        }
    )
    joined = rows.join(context, on=["source_file", "source_row"], how="left", maintain_order="left")
    assert summary_html._with_context(rows, context).equals(joined)
    assert summary_html._with_context(rows, context.clear()).get_column("clinic_right").null_count() == 3
