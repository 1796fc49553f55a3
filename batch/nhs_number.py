"""NHS number normalisation and validation (docs/decisions.md#d13, docs/decisions.md#d14).

Two implementations of one rule set: `validate` for a single value and `nhs_number_expr` for a whole polars
column without a Python call per row. Both are built from the same character sets and regular expressions
(written with ``\\uXXXX`` escapes, which Python ``re`` and the Rust engine behind polars read alike), and the
tests check that they agree on arbitrary text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

import polars as pl

Profile = Literal["simulated", "test", "live"]
PROFILES: tuple[str, ...] = get_args(Profile)

# Error code -> the name in the report's `reason` column (docs/decisions.md#d13). Checks run in this order.
REASONS: dict[str, str] = {
    "E_EMPTY": "empty",
    "E_FORMAT": "not_10_digits",
    "E_LEADING_ZERO_LOST": "leading_zero_lost",
    "E_SCI_NOTATION": "scientific_notation",
    "E_CHECK_TEN": "check_digit_ten",
    "E_CHECKSUM": "bad_check_digit",
    "E_REPDIGIT": "same_digit",
    "E_NOT_ENGLAND": "not_england",
    "E_TEST_IN_LIVE": "test_number_in_live",
    "E_LIVE_IN_TEST": "live_number_in_test",
}

# Warnings (docs/decisions.md#d13) -> names used in the warning column. Only `float_suffix` is decided here;
# the reader adds `duplicate` (it needs every row) and `unverified` belongs to whoever reads a
# verification-status column.
WARNINGS: dict[str, str] = {
    "W_FLOAT_SUFFIX": "float_suffix",
    "W_DUPLICATE": "duplicate",
    "W_UNVERIFIED": "unverified",
}

_EMPTY = REASONS["E_EMPTY"]
_FORMAT = REASONS["E_FORMAT"]
_LEADING_ZERO = REASONS["E_LEADING_ZERO_LOST"]
_SCI = REASONS["E_SCI_NOTATION"]
_CHECK_TEN = REASONS["E_CHECK_TEN"]
_CHECKSUM = REASONS["E_CHECKSUM"]
_REPDIGIT = REASONS["E_REPDIGIT"]
_NOT_ENGLAND = REASONS["E_NOT_ENGLAND"]
_TEST_IN_LIVE = REASONS["E_TEST_IN_LIVE"]
_LIVE_IN_TEST = REASONS["E_LIVE_IN_TEST"]
_FLOAT_SUFFIX = WARNINGS["W_FLOAT_SUFFIX"]

# Unicode White_Space plus the invisible characters that ride along when numbers are pasted from web pages or
# documents (zero-width space, byte order mark). An explicit set, because Python's str.strip() and Rust's
# trim() disagree on a few control characters.
_WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# Inner separators: any of the spaces above, ASCII hyphen-minus, and the Unicode hyphens word processors
# substitute for it.
_SEPARATORS = _WHITESPACE + "-\u2010\u2011"


def _char_class(chars: str) -> str:
    return "[" + "".join(f"\\u{ord(c):04x}" for c in chars) + "]"


_SEPARATOR_PATTERN = _char_class(_SEPARATORS)
# A spreadsheet's rendering of a large number: 9.434766E+09 (digits are gone, never repair).
_SCI_PATTERN = r"^[0-9]+(?:[.,][0-9]*)?[eE][+-]?[0-9]+$"
# A number read as a float and written back: 9434765919.0 (no digits lost).
_FLOAT_PATTERN = r"^[0-9]+\.0+$"
_FLOAT_TAIL_PATTERN = r"\.0+$"
_NINE_PATTERN = r"^[0-9]{9}$"
_TEN_PATTERN = r"^[0-9]{10}$"

_SEPARATOR_RE = re.compile(_SEPARATOR_PATTERN)
_SCI_RE = re.compile(_SCI_PATTERN)
_FLOAT_RE = re.compile(_FLOAT_PATTERN)
_FLOAT_TAIL_RE = re.compile(_FLOAT_TAIL_PATTERN)
_NINE_RE = re.compile(_NINE_PATTERN)
_TEN_RE = re.compile(_TEN_PATTERN)

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)

# By leading digit (docs/decisions.md#d14): 4xx and 6xx-7xx are England, Wales and Isle of Man; 9xx is never
# issued (test and synthetic patients); every other leading digit is Scotland, Northern Ireland, Republic of
# Ireland, reserved or unallocated.
_ENGLAND_LEADS = frozenset("467")
_TEST_LEAD = "9"


@dataclass(frozen=True)
class NhsNumberResult:
    """Outcome for one value: `number` is the normalised 10 digits when sendable, else None."""

    number: str | None
    reason: str | None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")


def _check_value(stem: str) -> int:
    """11 - (S mod 11), folded so 11 becomes 0; 10 means the stem is never issued."""
    total = sum(int(digit) * weight for digit, weight in zip(stem, _WEIGHTS, strict=True))
    return (11 - total % 11) % 11


def is_valid_modulus11(digits: str) -> bool:
    """True when `digits` is ten ASCII digits whose last digit is the modulus 11 check digit of the rest."""
    if _TEN_RE.fullmatch(digits) is None:
        return False
    return _check_value(digits[:9]) == int(digits[9])


def _normalise(value: str) -> str:
    text = value.strip(_WHITESPACE)
    if text.startswith("'"):
        text = text[1:]
    return _SEPARATOR_RE.sub("", text)


def _error(reason: str) -> NhsNumberResult:
    return NhsNumberResult(number=None, reason=reason, warnings=())


def validate(value: str | None, profile: Profile = "simulated") -> NhsNumberResult:
    """Normalise and check one value; the first failing check (docs/decisions.md#d13) decides the reason.

    Warnings are attached only to numbers that pass: an error row is not queried, so a warning would add
    nothing to its report line.
    """
    _check_profile(profile)
    text = _normalise(value) if value is not None else ""
    if not text:
        return _error(_EMPTY)
    if _SCI_RE.fullmatch(text):
        return _error(_SCI)
    warnings: tuple[str, ...] = ()
    if _FLOAT_RE.fullmatch(text):
        text = _FLOAT_TAIL_RE.sub("", text)
        warnings = (_FLOAT_SUFFIX,)
    if _NINE_RE.fullmatch(text):
        return _error(_LEADING_ZERO)
    if not _TEN_RE.fullmatch(text):
        return _error(_FORMAT)
    check = _check_value(text[:9])
    if check == 10:
        return _error(_CHECK_TEN)
    if check != int(text[9]):
        return _error(_CHECKSUM)
    if text == text[0] * 10:
        return _error(_REPDIGIT)
    lead = text[0]
    if lead != _TEST_LEAD and lead not in _ENGLAND_LEADS:
        return _error(_NOT_ENGLAND)
    if profile == "live" and lead == _TEST_LEAD:
        return _error(_TEST_IN_LIVE)
    if profile != "live" and lead != _TEST_LEAD:
        return _error(_LIVE_IN_TEST)
    return NhsNumberResult(number=text, reason=None, warnings=warnings)


def nhs_number_expr(column: str | pl.Expr, profile: Profile = "simulated") -> pl.Expr:
    """Vectorised `validate`: a struct of nullable Utf8 `nhs_number`, `nhs_reason` and `nhs_warning`.

    Each intermediate is computed once as a field of a working struct; composing plain expressions instead
    would copy the string clean-up into every branch of the decision chain (over ten times slower).
    """
    _check_profile(profile)
    source = pl.col(column) if isinstance(column, str) else column
    f = pl.field
    text = (
        source.cast(pl.String)
        .str.strip_chars(_WHITESPACE)
        .str.strip_prefix("'")
        .str.replace_all(_SEPARATOR_PATTERN, "")
    )
    work = (
        pl.struct(text.alias("text"))
        .struct.with_fields(has_float_suffix=f("text").str.contains(_FLOAT_PATTERN))
        .struct.with_fields(
            digits=pl.when(f("has_float_suffix"))
            .then(f("text").str.replace(_FLOAT_TAIL_PATTERN, ""))
            .otherwise(f("text"))
        )
        .struct.with_fields(
            is_ten=f("digits").str.contains(_TEN_PATTERN),
            # Ten ASCII digits fit an Int64, so check digit and range come from integer arithmetic. Values
            # that are not ten digits never reach the arithmetic branches of the chain below.
            number=f("digits").cast(pl.Int64, strict=False),
        )
        .struct.with_fields(
            check=(
                11
                - pl.sum_horizontal(
                    [(f("number") // 10 ** (9 - i) % 10) * weight for i, weight in enumerate(_WEIGHTS)]
                )
                % 11
            )
            % 11,
            lead=f("number") // 1_000_000_000,
        )
    )
    is_test = f("lead") == int(_TEST_LEAD)
    profile_reason = (
        pl.when(is_test).then(pl.lit(_TEST_IN_LIVE))
        if profile == "live"
        else pl.when(~is_test).then(pl.lit(_LIVE_IN_TEST))
    )
    reason = (
        pl.when(f("text").is_null() | (f("text").str.len_bytes() == 0))
        .then(pl.lit(_EMPTY))
        .when(f("text").str.contains(_SCI_PATTERN))
        .then(pl.lit(_SCI))
        .when(f("digits").str.contains(_NINE_PATTERN))
        .then(pl.lit(_LEADING_ZERO))
        .when(~f("is_ten"))
        .then(pl.lit(_FORMAT))
        .when(f("check") == 10)
        .then(pl.lit(_CHECK_TEN))
        .when(f("check") != f("number") % 10)
        .then(pl.lit(_CHECKSUM))
        # Ten-digit multiples of 1111111111 are exactly the same-digit numbers.
        .when(f("number") % 1_111_111_111 == 0)
        .then(pl.lit(_REPDIGIT))
        .when(~is_test & ~f("lead").is_in([int(d) for d in _ENGLAND_LEADS]))
        .then(pl.lit(_NOT_ENGLAND))
        .otherwise(profile_reason)
        .cast(pl.String)
    )
    valid = f("nhs_reason").is_null()
    result = work.struct.with_fields(nhs_reason=reason).struct.with_fields(
        nhs_number=pl.when(valid).then(f("digits")),
        nhs_warning=pl.when(valid & f("has_float_suffix")).then(pl.lit(_FLOAT_SUFFIX)).cast(pl.String),
    )
    return pl.struct(result.struct.field(name) for name in ("nhs_number", "nhs_reason", "nhs_warning"))
