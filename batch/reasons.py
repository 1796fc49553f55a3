"""Outcomes and reason codes in plain English, for the people who read `summary.html`.

Every reason code of docs/decisions.md#d18 (README's outcome table) has a sentence; a code this module does
not know still gets its outcome's sentence, with the code beside it in the report.
"""

from __future__ import annotations

import re

from batch.states import Outcome

OUTCOME_TEXT: dict[str, str] = {
    Outcome.FLAGGED.value: "CP-IS holds at least one plan for the child.",
    Outcome.NOT_FLAGGED.value: "CP-IS holds no record for the child.",
    Outcome.INVALID_NHS_NUMBER.value: "The NHS number is not valid, so CP-IS was not asked.",
    Outcome.ERROR.value: "CP-IS was asked but could not give an answer.",
    Outcome.NO_REPLY.value: "CP-IS was asked but never replied.",
    Outcome.OUTSIDE_WINDOW.value: "The appointment is not within the job's date window, so CP-IS was not asked.",
}

INVALID_TEXT: dict[str, str] = {
    "empty": "The NHS number is missing.",
    "not_10_digits": "The NHS number is not 10 digits.",
    "leading_zero_lost": (
        "The NHS number has 9 digits: a spreadsheet probably dropped its leading zero. Export the list with"
        " the column as text."
    ),
    "scientific_notation": (
        "The NHS number was turned into a number by a spreadsheet (like 9.43E+09) and its digits are lost."
        " Export the list with the column as text."
    ),
    "check_digit_ten": "The NHS number cannot exist (its check digit would be 10): it is probably mistyped.",
    "bad_check_digit": "The NHS number's check digit is wrong: it is probably mistyped.",
    "same_digit": "The NHS number is one digit repeated, which is never issued.",
    "not_england": "The NHS number was not issued in England or Wales (CP-IS covers England).",
    "test_number_in_live": "The NHS number is a test number (999 range), which the live service never asks about.",
    "live_number_in_test": "The NHS number is a real patient's, which a test set-up never asks about.",
}

WINDOW_TEXT: dict[str, str] = {
    "no_appointment_date": "The row has no readable appointment date, so it cannot be placed in the job's window.",
    "outside_window": "The appointment is before today or after the job's window ends, so CP-IS was not asked.",
}

_SEND_FAILED_TEXT: dict[str, str] = {
    "connect_failed": "the connection to Spine was refused",
    "connect_timeout": "the connection to Spine timed out",
    "connection_lost": "the connection to Spine was lost",
}


def _codes(text: str) -> str:
    return re.sub(r"\s*[+,]\s*", ", ", text)


def _error_text(reason: str) -> str | None:
    kind, _, rest = reason.partition(":")
    if kind == "QUQI":
        return f"CP-IS could not carry out the query (issue code {_codes(rest)})."
    if kind == "MCCI":
        ack, _, codes = rest.partition(":")
        return f"Spine rejected the query (acknowledgement {ack}, code {_codes(codes)})."
    if reason == "REPC:no_plans":
        return "CP-IS answered with a record that holds no plan."
    if kind == "SOAPFault":
        return f"Spine refused the message (fault code {_codes(rest)})."
    if kind == "MessageError":
        return f"Spine refused the message envelope (ebXML error {_codes(rest)})."
    if re.fullmatch(r"http_[0-9]{3}", reason):
        return f"Spine answered with HTTP status {reason[5:]} instead of taking the query."
    if reason == "unrecognised_response":
        return "Spine's answer to the query could not be understood."
    if kind == "send_failed":
        why = _SEND_FAILED_TEXT.get(rest)
        if why is None and rest.startswith("retriable:"):
            why = f"Spine kept answering {rest.removeprefix('retriable:')}"
        return f"The query never reached Spine: {why or rest}, on every attempt."
    if reason == "spine_unavailable":
        return "Spine could not be reached, so the run stopped sending queries before this child's."
    if reason == "internal:no_outcome":
        return "No answer was recorded for this child: a fault in cpis-batch (please report it)."
    return None


_NO_REPLY = re.compile(r"no reply to ([0-9]+) quer(?:y|ies) sent")


def explain(outcome: str, reason: str | None) -> str:
    """One or two plain-English sentences for a row's outcome and reason."""
    text: str | None = None
    if reason is not None:
        if outcome == Outcome.INVALID_NHS_NUMBER.value:
            text = INVALID_TEXT.get(reason)
        elif outcome == Outcome.ERROR.value:
            text = _error_text(reason)
        elif outcome == Outcome.OUTSIDE_WINDOW.value:
            text = WINDOW_TEXT.get(reason)
        elif outcome == Outcome.NO_REPLY.value and (match := _NO_REPLY.fullmatch(reason)):
            n = int(match.group(1))
            text = f"Spine never replied, although it may have had {n} {'query' if n == 1 else 'queries'}."
    return text or OUTCOME_TEXT.get(outcome, f"Outcome {outcome}.")
