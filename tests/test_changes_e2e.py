"""What changed since last night, end to end: two runs of one job against the simulated Spine, whose dataset is
edited (a new plan, an ended plan, a changed LA, a removed record, ...) and reloaded between them.

Also reads the run's flagged.xlsx back with openpyxl, and renders its summary.html in headless Chromium.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import lxml.html
import openpyxl
import polars as pl
import pytest

from batch.changes import RunOutcomes
from batch.csvsafe import excel_safe
from batch.job import run_changes
from batch.pki import DevPki
from batch.run_inputs import decode as decode_inputs
from batch.store import Store, state_file
from spine_sim.dataset import random_test_number
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import running_sim
from tests.browser import dump_dom, read_png, screenshot
from tests.report_frames import build_changes
from tests.support import run_cli

pytestmark = pytest.mark.e2e

TODAY = datetime.now(ZoneInfo("Europe/London")).date()
HOSTILE = "<script>document.title='x'</script> Vega"
LA = {
    "LA1": {
        "name": "Northshire Council (simulated)",
        "office_phone": "01632960101",
        "emergency_phone": "+441632960102",
    },
    "LA2": {
        "name": "Eastborough Council (simulated)",
        "office_phone": "01632960201",
        "emergency_phone": "+441632960202",
    },
}
# Children in NHS-number order, each with what it is for.
ROLES = (
    "plan_started",
    "plan_ended",
    "la_changed",
    "no_longer_flagged",
    "newly_flagged",
    "plan_type_changed",
    "unchanged",
    "error_before",
    "error_now",
    "outside_window_now",
    "never_flagged",
)
_RNG, _TAKEN = random.Random(9), set[str]()
NUMBERS = dict(zip(ROLES, sorted(random_test_number(_RNG, _TAKEN) for _ in ROLES), strict=True))
NAMES = {role: f"Child {role.replace('_', ' ')}" for role in ROLES} | {"unchanged": HOSTILE}
ENDED = (TODAY - timedelta(days=1)).isoformat()
UCP_END = (TODAY + timedelta(days=100)).isoformat()


def _plan(plan_type: str, start: str, end: str | None = None) -> dict[str, Any]:
    return {"type": plan_type, "start": start, "end": end}


def _record(la: str, *plans: dict[str, Any], kind: str = "child") -> dict[str, Any]:
    return {"la_code": la, "subject_kind": kind, "plans": list(plans)}


def _dataset(night: int) -> dict[str, Any]:
    """The simulator's dataset the night before (1) and on the night (2)."""
    first = night == 1
    records = {
        "plan_started": [_record("LA1", _plan("CPP", "2025-01-05"))]
        if first
        else [_record("LA1", _plan("CPP", "2025-01-05"), _plan("LAC", "2026-11-01"))],
        "plan_ended": [_record("LA1", _plan("CPP", "2025-01-10", None if first else ENDED))],
        "la_changed": [_record("LA1" if first else "LA2", _plan("CPP", "2025-02-01"))],
        "no_longer_flagged": [_record("LA1", _plan("CPP", "2025-03-01"))] if first else [],
        "newly_flagged": []
        if first
        else [_record("LA2", _plan("UCP", "2026-10-01", UCP_END), kind="unborn")],
        "plan_type_changed": [_record("LA1", _plan("CPP" if first else "LAC", "2025-04-01"))],
        "unchanged": [_record("LA2", _plan("LAC", "2024-06-01"))],
        "error_before": [] if first else [_record("LA1", _plan("CPP", "2025-05-01"))],
        "error_now": [_record("LA1", _plan("CPP", "2025-06-01"))] if first else [],
        "outside_window_now": [_record("LA1", _plan("CPP", "2025-07-01"))],
        "never_flagged": [],
    }
    failing = "error_before" if first else "error_now"
    return {
        "local_authorities": LA,
        "children": [
            {
                "nhs_number": NUMBERS[role],
                "given": "Sim",
                "family": role,
                "birth_date": "2019-01-01",
                "records": records[role],
                "access": [],
            }
            for role in ROLES
        ],
        "errors": {NUMBERS[failing]: {"kind": "quqi", "code": "SIMERR1", "display": "Internal failure"}},
    }


def _list(night: int) -> pl.DataFrame:
    soon, later = TODAY + timedelta(days=1), TODAY + timedelta(days=60)
    rows = [
        {
            "NHS No": NUMBERS[role],
            "Patient Name": NAMES[role],
            "DOB": "01/01/2019",
            "Appointment Date": (later if role == "outside_window_now" and night == 2 else soon).strftime(
                "%d/%m/%Y"
            ),
            "Clinic": "Eye clinic (simulated)" if i % 2 else "Ear clinic (simulated)",
        }
        for i, role in enumerate(ROLES)
    ]
    rows.append(
        {
            "NHS No": "123",
            "Patient Name": "Child invalid",
            "DOB": "01/01/2019",
            "Appointment Date": soon.strftime("%d/%m/%Y"),
            "Clinic": "Ear clinic (simulated)",
        }
    )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> dict[int, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("changes")
    pki = dev_pki.directory
    port = free_port()
    dataset = tmp / "dataset.json"
    results: dict[int, dict[str, Any]] = {}
    for night in (1, 2):
        dataset.write_text(json.dumps(_dataset(night)))
        _list(night).write_csv(tmp / "list.csv")
        with running_sim(
            pki_dir=pki, dataset=dataset, reply_url=f"https://127.0.0.1:{port}/cpis/replies"
        ) as sim:
            tables = job_tables(
                tmp=tmp,
                pki=pki,
                inputs="list.csv",
                spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
                inbound_port=port,
                name="nightly-changes",
            )
            tables["input"].update(
                clinic_column="Clinic", name_column="Patient Name", date_of_birth_column="DOB", window_days=14
            )
            completed = run_cli("run", str(write_job(tmp / "job.toml", tables)))
        run_dir = (tmp / "out" / "latest").resolve()
        results[night] = {
            "completed": completed,
            "dir": run_dir,
            "summary": json.loads((run_dir / "summary.json").read_text()),
            "tmp": tmp,
        }
    return results


def test_both_runs_complete(nights: dict[int, dict[str, Any]]) -> None:
    for night in nights.values():
        # One child ends `error` each night, so the exit code is 1.
        assert night["completed"].returncode == 1, night["completed"].stderr[-3000:]
    assert nights[1]["dir"] != nights[2]["dir"]
    assert nights[2]["summary"]["outcomes"]["outside_window"] == 1


def test_the_first_run_has_an_empty_changes_file_with_every_column(nights: dict[int, dict[str, Any]]) -> None:
    first = nights[1]
    assert first["summary"]["changes"] == "first_run"
    changes = pl.read_parquet(first["dir"] / "changes.parquet")
    assert changes.height == 0
    assert changes.columns == pl.read_parquet(nights[2]["dir"] / "changes.parquet").columns
    assert (first["dir"] / "changes.csv").read_text() == ",".join(changes.columns) + "\n"


def _la(side: str, code: str | None) -> dict[str, str | None]:
    la = LA.get(code or "", {})
    return {
        f"{side}_la_code": code,
        f"{side}_la_name": la.get("name"),
        f"{side}_la_office_phone": la.get("office_phone"),
        f"{side}_la_emergency_phone": la.get("emergency_phone"),
    }


def _side(
    side: str,
    plan_type: str | None = None,
    start: str | None = None,
    end: str | None = None,
    la: str | None = None,
) -> dict[str, str | None]:
    return {
        f"{side}_plan_type": plan_type,
        f"{side}_plan_start": start,
        f"{side}_plan_end": end,
        **_la(side, la),
    }


def test_the_second_run_reports_exactly_the_changes(nights: dict[int, dict[str, Any]]) -> None:
    first, second = nights[1]["summary"], nights[2]["summary"]
    expected_changes = [
        ("plan_started", _side("before"), _side("after", "LAC", "2026-11-01", None, "LA1")),
        (
            "plan_ended",
            _side("before", "CPP", "2025-01-10", None, "LA1"),
            _side("after", "CPP", "2025-01-10", ENDED, "LA1"),
        ),
        (
            "la_changed",
            _side("before", "CPP", "2025-02-01", None, "LA1"),
            _side("after", "CPP", "2025-02-01", None, "LA2"),
        ),
        ("no_longer_flagged", _side("before", "CPP", "2025-03-01", None, "LA1"), _side("after")),
        ("newly_flagged", _side("before"), _side("after", "UCP", "2026-10-01", UCP_END, "LA2")),
        (
            "plan_type_changed",
            _side("before", "CPP", "2025-04-01", None, "LA1"),
            _side("after", "LAC", "2025-04-01", None, "LA1"),
        ),
    ]
    rows = []
    for i, (kind, before, after) in enumerate(expected_changes):
        role = ROLES[i]
        assert role == kind
        sides = {k: v for pair in zip(before.items(), after.items(), strict=True) for k, v in pair}
        rows.append(
            {
                "nhs_number": NUMBERS[role],
                "patient_name": NAMES[role],
                "date_of_birth": "01/01/2019",
                "clinic": "Eye clinic (simulated)" if i % 2 else "Ear clinic (simulated)",
                "change": kind,
                **{k: sides[k] for k in sorted(sides, key=lambda k: (k.split("_", 1)[1], k))},
                "previous_run_id": first["run_id"],
                "previous_reference_date": first["reference_date"],
                "run_id": second["run_id"],
                "reference_date": second["reference_date"],
            }
        )
    changes = pl.read_parquet(nights[2]["dir"] / "changes.parquet")
    expected = pl.DataFrame(rows, schema=changes.schema)
    assert changes.equals(expected), (changes, expected)
    csv = pl.read_csv(nights[2]["dir"] / "changes.csv", infer_schema=False)
    assert csv.equals(excel_safe(changes))
    assert second["changes"] == {kind: 1 for kind, _, _ in expected_changes}


def test_flagged_xlsx_keeps_nhs_numbers_and_phones_as_text(nights: dict[int, dict[str, Any]]) -> None:
    run_dir = nights[2]["dir"]
    flagged = pl.read_parquet(run_dir / "flagged.parquet")
    sheet = openpyxl.load_workbook(run_dir / "flagged.xlsx").active
    assert sheet is not None
    rows = list(sheet.iter_rows())
    assert [cell.value for cell in rows[0]] == flagged.columns
    assert len(rows) == flagged.height + 1
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref
    for name in ("NHS No", "nhs_number", "la_office_phone", "la_emergency_phone", "la_code"):
        col = flagged.columns.index(name)
        assert [row[col].value for row in rows[1:]] == flagged.get_column(name).to_list(), name
        assert {row[col].data_type for row in rows[1:]} == {"s"}, name
    start = flagged.columns.index("plan_start")
    assert [row[start].value.date().isoformat() for row in rows[1:]] == flagged.get_column(
        "plan_start"
    ).to_list()


def test_the_first_run_page_says_there_is_nothing_to_compare(nights: dict[int, dict[str, Any]]) -> None:
    doc = lxml.html.document_fromstring((nights[1]["dir"] / "summary.html").read_text())
    section = doc.xpath("//section[@id='changes']")[0]
    assert section.get("data-first-run") == "true"
    assert "first complete run" in section.text_content()


def test_summary_html_in_a_browser(nights: dict[int, dict[str, Any]], tmp_path: Path) -> None:
    run_dir = nights[2]["dir"]
    page = run_dir / "summary.html"
    png = screenshot(page, tmp_path / "summary.png", tmp_path / "profile")
    pixels = read_png(png)
    assert (pixels.width, pixels.height) == (1280, 2000)
    background = pixels.rows[0][: pixels.channels]
    assert len(pixels.distinct()) > 50
    assert pixels.share_unlike(background) > 0.02

    dom = lxml.html.document_fromstring(dump_dom(page, tmp_path / "profile"))
    # The hostile name stayed text: no script ran (it would have retitled the page) and none is in the DOM.
    assert not dom.xpath("//script")
    assert dom.xpath("string(//head/title)").startswith("CP-IS pre-check: nightly-changes")
    assert HOSTILE in [td.text_content() for td in dom.xpath("//td[@class='name']")]
    flagged = pl.read_parquet(run_dir / "flagged.parquet")
    assert dom.xpath("string(//span[@id='flagged-count'])") == str(
        flagged.get_column("nhs_number").n_unique()
    )
    shown = {
        (
            tr.get("data-nhs-number"),
            tr.xpath("string(td[contains(@class, 'la-office-phone')])"),
            tr.xpath("string(td[contains(@class, 'la-emergency-phone')])"),
        )
        for tr in dom.xpath("//section[@id='flagged']//tr[@data-nhs-number]")
    }
    assert shown == set(flagged.select("nhs_number", "la_office_phone", "la_emergency_phone").iter_rows())
    changes = [
        (tr.get("data-nhs-number"), tr.get("data-change")) for tr in dom.xpath("//tr[@class='change-row']")
    ]
    assert changes == [(NUMBERS[role], role) for role in ROLES[:6]]


async def test_changes_compared_a_page_of_children_at_a_time_are_those_of_the_whole_runs(
    nights: dict[int, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run compares a page of its children at a time beside the same children of the previous run; with
    # pages of 2 children the report must be the one written, and the one of both runs compared whole.
    monkeypatch.setattr(state_file, "_PAGE_ROWS", 2)
    run_id, reference = nights[2]["summary"]["run_id"], nights[2]["summary"]["reference_date"]
    async with Store.open_read_only(nights[2]["tmp"] / "state" / "state.sqlite") as store:
        run = await store.find_run("nightly-changes", run_id)
        assert run is not None
        inputs = await store.run_inputs(run_id)
        assert inputs is not None
        patients = decode_inputs([part for part in inputs.parts if part is not None])
        paged, previous = await run_changes(store, run_id, reference, patients)
        prior = await store.previous_complete_run(run_id)
        assert prior is not None and previous is not None and previous.run_id == prior.run_id
        whole = build_changes(
            patients,
            RunOutcomes(run_id, date.fromisoformat(reference), await store.outcome_frame(run_id)),
            RunOutcomes(prior.run_id, previous.reference_date, await store.outcome_frame(prior.run_id)),
        )
    assert paged.height > 2
    assert paged.equals(whole)
    assert paged.equals(pl.read_parquet(nights[2]["dir"] / "changes.parquet"))
