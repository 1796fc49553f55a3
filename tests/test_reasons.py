"""Every outcome and reason code the docs list has a plain-English sentence of its own in summary.html."""

from __future__ import annotations

import re

import pytest

from batch.reasons import OUTCOME_TEXT, explain
from batch.states import Outcome
from tests.support import REPO

# Sample values for the placeholders in documented codes (`QUQI:<codes>`, `http_<status>`, ...).
_PLACEHOLDERS = {
    "<codes>": ["XX1", "XX1+XX2", "200,206"],
    "<code>": ["ValueNotRecognized"],
    "<type>": ["AE", "AR", "none"],
    "<AE/AR>": ["AE", "AR"],
    "<status>": ["404", "302"],
    "<why>": ["connect_failed", "connect_timeout", "connection_lost", "retriable:http_503", "ReadError"],
}


def _expand(code: str) -> list[str]:
    for placeholder, values in _PLACEHOLDERS.items():
        if placeholder in code:
            return [expanded for value in values for expanded in _expand(code.replace(placeholder, value, 1))]
    return [code]


def _documented() -> set[tuple[str, str]]:
    """(outcome, reason) for every code in README's outcome table and the tables of docs/decisions.md#d18."""
    codes: set[tuple[str, str]] = set()
    readme = (REPO / "README.md").read_text()
    decisions = (REPO / "docs" / "decisions.md").read_text()
    d18 = decisions[decisions.index('<a id="d18">') : decisions.index('<a id="d19">')]
    for text in (readme, d18):
        for outcome, cell in re.findall(
            r"^\| `(invalid_nhs_number|error|outside_window)` \|[^|]*\| (.*) \|$", text, re.M
        ):
            codes |= {(outcome, c) for c in re.findall(r"`([^`]+)`", cell)}
    error_table = d18[d18.index("| `error` reason |") :]
    codes |= {("error", c) for c in re.findall(r"^\| `([^`]+)` \|", error_table, re.M)}
    return {(o, expanded) for o, c in codes for expanded in _expand(c)}


DOCUMENTED = sorted(_documented())


def test_the_docs_were_read() -> None:
    outcomes = {o for o, _ in DOCUMENTED}
    assert {"invalid_nhs_number", "error"} <= outcomes
    assert ("error", "internal:no_outcome") in DOCUMENTED
    assert ("invalid_nhs_number", "test_number_in_live") in DOCUMENTED
    assert len(DOCUMENTED) > 30


@pytest.mark.parametrize(("outcome", "reason"), DOCUMENTED)
def test_every_documented_reason_has_its_own_sentence(outcome: str, reason: str) -> None:
    text = explain(outcome, reason)
    assert text != OUTCOME_TEXT[outcome]
    assert text.endswith(".") and "<" not in text


@pytest.mark.parametrize(
    ("outcome", "reason", "expected"),
    [
        (
            "no_reply",
            "no reply to 3 queries sent",
            "Spine never replied, although it may have had 3 queries.",
        ),
        ("no_reply", "no reply to 1 query sent", "Spine never replied, although it may have had 1 query."),
        ("error", "QUQI:XX1+XX2", "CP-IS could not carry out the query (issue code XX1, XX2)."),
        (
            "error",
            "send_failed:retriable:SOAPFault:206",
            "The query never reached Spine: Spine kept answering SOAPFault:206, on every attempt.",
        ),
        ("invalid_nhs_number", "empty", "The NHS number is missing."),
        (
            "outside_window",
            "no_appointment_date",
            "The row has no readable appointment date, so it cannot be placed in the job's window.",
        ),
    ],
)
def test_sentences(outcome: str, reason: str, expected: str) -> None:
    assert explain(outcome, reason) == expected


def test_every_outcome_has_a_sentence_and_unknown_codes_fall_back_to_it() -> None:
    assert set(OUTCOME_TEXT) == {o.value for o in Outcome}
    assert explain("error", "SOMETHING:new") == OUTCOME_TEXT["error"]
    assert explain("invalid_nhs_number", "new_rule") == OUTCOME_TEXT["invalid_nhs_number"]
    assert explain("flagged", None) == OUTCOME_TEXT["flagged"]
