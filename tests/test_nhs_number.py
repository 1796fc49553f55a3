"""NHS number validation: examples, edge cases, properties and an independent oracle.

See docs/decisions.md#d13 and docs/decisions.md#d14. Literal numbers here come from the 999 range, plus the
worked example of docs/decisions.md#d13 (943 476 5919) and a same-digit example. Numbers in other ranges are
generated from random stems at test time.
"""

from __future__ import annotations

import nhs_number as oracle
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.nhs_number import (
    PROFILES,
    REASONS,
    NhsNumberResult,
    _char_class,
    _check_value,
    is_valid_modulus11,
    nhs_number_expr,
    validate,
)

WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def check_value(stem: str) -> int:
    """The modulus 11 check of docs/decisions.md#d13 step by step, branches and all (the module under test
    uses the compact form)."""
    total = sum(int(d) * w for d, w in zip(stem, WEIGHTS, strict=True))
    c = 11 - total % 11
    return 0 if c == 11 else c


def with_check(stem: str) -> str | None:
    c = check_value(stem)
    return None if c == 10 else stem + str(c)


def run_expr(values: list[str | None], profile: str = "simulated") -> list[NhsNumberResult]:
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    out = frame.select(nhs_number_expr("v", profile).alias("r")).unnest("r")
    assert out.schema == pl.Schema(
        {"nhs_number": pl.String, "nhs_reason": pl.String, "nhs_warning": pl.String}
    )
    return [NhsNumberResult(number=n, reason=r, warnings=(w,) if w else ()) for n, r, w in out.iter_rows()]


def uniform_between(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers spread over [low, high]; st.integers itself favours small values, which would leave most
    of the 10-digit space (and most ranges) unvisited."""
    digits = st.lists(st.integers(0, 9), min_size=12, max_size=12)
    return digits.map(lambda ds: low + int("".join(map(str, ds))) * (high - low + 1) // 10**12)


def stems_between(low: int, high: int) -> st.SearchStrategy[str]:
    """Stems whose numbers fall in [low, high] (inclusive) and have a usable check digit."""
    return (
        uniform_between(low // 10, high // 10)
        .map(lambda n: f"{n:09d}")
        .filter(lambda s: with_check(s) is not None and low <= int(with_check(s) or 0) <= high)
    )


def valid_number(low: int, high: int) -> st.SearchStrategy[str]:
    return stems_between(low, high).map(lambda s: with_check(s) or "").filter(lambda n: len(set(n)) > 1)


# --- reason mapping (docs/decisions.md#d13) --------------------------------------------------------------


def test_reason_mapping_matches_spec() -> None:
    assert REASONS == {
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


# --- worked examples and edge cases (docs/decisions.md#d13) ----------------------------------------------

EXAMPLES: list[tuple[str | None, str | None, str | None, tuple[str, ...]]] = [
    # value, expected number, expected reason, expected warnings (simulated profile)
    ("943 476 5919", "9434765919", None, ()),
    ("9991234012", "9991234012", None, ()),
    ("9991234020", "9991234020", None, ()),  # C = 11 -> check digit 0
    *[(f"999123408{x}", None, "check_digit_ten", ()) for x in range(10)],
    ("9991234013", None, "bad_check_digit", ()),
    ("943-476-5919", "9434765919", None, ()),
    ("9434765919.0", "9434765919", None, ("float_suffix",)),
    ("9434765919.000", "9434765919", None, ("float_suffix",)),
    ("9.434766E+09", None, "scientific_notation", ()),
    ("9.43E+09", None, "scientific_notation", ()),
    ("9,434766E+09", None, "scientific_notation", ()),
    ("9.434766e9", None, "scientific_notation", ()),
    ("943476591", None, "leading_zero_lost", ()),
    ("943476591.0", None, "leading_zero_lost", ()),
    ("９４３４７６５９１９", None, "not_10_digits", ()),
    ("９４３４７６５９１", None, "not_10_digits", ()),
    ("943476591٩", None, "not_10_digits", ()),  # Arabic-Indic nine
    ("\u00a09434765919\u00a0", "9434765919", None, ()),
    ("943\u00a0476\u00a05919", "9434765919", None, ()),
    ("'9434765919", "9434765919", None, ()),
    ("  '943 476 5919\t", "9434765919", None, ()),
    ("''9434765919", None, "not_10_digits", ()),  # only one apostrophe is a text marker
    ("9434765919'", None, "not_10_digits", ()),
    ("943\u2011476\u20115919", "9434765919", None, ()),
    ("\ufeff9434765919", "9434765919", None, ()),
    ("9434765919.5", None, "not_10_digits", ()),
    ("9434765919.", None, "not_10_digits", ()),
    ("94347659190", None, "not_10_digits", ()),
    ("NHS9434765919", None, "not_10_digits", ()),
    ("943/476/5919", None, "not_10_digits", ()),
    ("12345", None, "not_10_digits", ()),
    ("", None, "empty", ()),
    ("   ", None, "empty", ()),
    ("'", None, "empty", ()),
    (" - - ", None, "empty", ()),
    (None, None, "empty", ()),
    *[(str(d) * 10, None, "same_digit", ()) for d in range(10)],
    ("9999999999.0", None, "same_digit", ()),
]


@pytest.mark.parametrize(("value", "number", "reason", "warnings"), EXAMPLES)
def test_examples(
    value: str | None, number: str | None, reason: str | None, warnings: tuple[str, ...]
) -> None:
    expected = NhsNumberResult(number=number, reason=reason, warnings=warnings)
    assert validate(value) == expected
    assert run_expr([value]) == [expected]


def test_worked_example_sums() -> None:
    # The weighted sums of the worked examples (docs/decisions.md#d13), recomputed.
    assert sum(int(d) * w for d, w in zip("943476591", WEIGHTS, strict=True)) == 299
    assert sum(int(d) * w for d, w in zip("999123401", WEIGHTS, strict=True)) == 295
    assert sum(int(d) * w for d, w in zip("999123402", WEIGHTS, strict=True)) == 297
    assert sum(int(d) * w for d, w in zip("999123408", WEIGHTS, strict=True)) == 309


def test_same_digit_numbers_pass_modulus_11() -> None:
    for d in "0123456789":
        assert is_valid_modulus11(d * 10)


def test_unknown_profile_is_rejected() -> None:
    message = r"^unknown profile 'production'; expected one of simulated, test, live$"
    with pytest.raises(ValueError, match=message):
        validate("9991234012", "production")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        nhs_number_expr("v", "production")  # type: ignore[arg-type]


def test_char_class_escapes_every_character() -> None:
    # Python re and polars' Rust engine read \uXXXX alike, so both see the same set.
    assert _char_class("\t -\u2010\ufeff") == "[\\u0009\\u0020\\u002d\\u2010\\ufeff]"


def test_check_value_takes_a_stem_of_exactly_nine_digits() -> None:
    assert _check_value("943476591") == 9  # the worked example of docs/decisions.md#d13, 943 476 5919
    assert _check_value("400000000") == 4
    for stem in ("94347659", "9434765919"):
        with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is (longer|shorter) than argument 1$"):
            _check_value(stem)


@pytest.mark.parametrize(
    "digits", ["999123401", "99912340120", "９９９１２３４０１２", "999 123 4012", "", "abcdefghij"]
)
def test_is_valid_modulus11_needs_ten_ascii_digits(digits: str) -> None:
    assert not is_valid_modulus11(digits)


# --- profiles and ranges (docs/decisions.md#d14) ---------------------------------------------------------


@pytest.mark.parametrize("profile", ["simulated", "test"])
def test_test_range_number_is_accepted_in_non_live_profiles(profile: str) -> None:
    assert validate("9991234012", profile) == NhsNumberResult("9991234012", None, ())  # type: ignore[arg-type]


def test_test_range_number_is_refused_in_live() -> None:
    assert validate("9991234012", "live").reason == "test_number_in_live"
    assert run_expr(["9991234012"], "live")[0].reason == "test_number_in_live"


ANY_VALID = valid_number(10, 9_999_999_999)
ENGLAND = valid_number(4_000_000_000, 4_999_999_999) | valid_number(6_000_000_000, 7_999_999_999)
ELSEWHERE = (
    valid_number(10, 99_999_999)  # unallocated
    | valid_number(100_000_000, 3_112_999_999)  # Scotland CHI
    | valid_number(3_113_000_000, 3_199_999_999)  # unallocated
    | valid_number(3_200_000_000, 3_999_999_999)  # Northern Ireland
    | valid_number(5_000_000_000, 5_999_999_999)  # reserved
    | valid_number(8_000_000_000, 8_599_999_999)  # Republic of Ireland
    | valid_number(8_600_000_000, 8_999_999_999)  # unallocated
)


@given(number=ENGLAND)
def test_england_number_by_profile(number: str) -> None:
    assert validate(number, "live") == NhsNumberResult(number, None, ())
    assert validate(number, "test").reason == "live_number_in_test"
    assert validate(number, "simulated").reason == "live_number_in_test"


@given(number=ELSEWHERE, profile=st.sampled_from(PROFILES))
def test_numbers_outside_england_are_never_queried(number: str, profile: str) -> None:
    assert validate(number, profile).reason == "not_england"  # type: ignore[arg-type]


@given(number=ANY_VALID)
def test_ranges_agree_with_reference_constants(number: str) -> None:
    if oracle.REGION_ENGLAND_WALES_IOM.contains_number(number):
        expected_live = None
    elif oracle.REGION_SYNTHETIC.contains_number(number):
        expected_live = "test_number_in_live"
    else:
        expected_live = "not_england"
    assert validate(number, "live").reason == expected_live


# --- modulus 11 properties and the independent oracle ---------------------------------------------------

STEMS = uniform_between(0, 999_999_999).map(lambda n: f"{n:09d}")


@given(stem=STEMS)
def test_modulus_11_definition(stem: str) -> None:
    c = check_value(stem)
    for d in range(10):
        number = f"{stem}{d}"
        assert is_valid_modulus11(number) == (c == d)
        reason = validate(number, "live").reason
        if c == 10:
            assert reason == "check_digit_ten"
        elif c != d:
            assert reason == "bad_check_digit"
        else:
            assert reason not in {"check_digit_ten", "bad_check_digit"}


@given(stem=STEMS)
def test_checksum_matches_reference_library(stem: str) -> None:
    assert oracle.calculate_checksum(stem) == check_value(stem)
    for d in range(10):
        number = f"{stem}{d}"
        if oracle.REGION_SCOTLAND.contains_number(number):
            # The library adds a date-of-birth rule for CHI numbers; compare the arithmetic only.
            assert is_valid_modulus11(number) == (oracle.calculate_checksum(stem) == d)
        else:
            assert is_valid_modulus11(number) == oracle.is_valid(number)


@given(stem=st.integers(999_000_000, 999_999_999).map(str))
def test_999_range_against_reference_library(stem: str) -> None:
    for d in range(10):
        number = f"{stem}{d}"
        ours = validate(number, "test")
        if number == "9999999999":
            # The library accepts same-digit numbers without a region; docs/decisions.md#d13 rejects them.
            assert oracle.is_valid(number) and ours.reason == "same_digit"
        else:
            assert ours.ok == oracle.is_valid(number)
            assert ours.ok == oracle.is_valid(number, oracle.REGION_SYNTHETIC)


@given(number=valid_number(9_990_000_000, 9_999_999_998))
def test_display_formats_agree_with_reference_standardise(number: str) -> None:
    for shown in (f"{number[:3]} {number[3:6]} {number[6:]}", f"{number[:3]}-{number[3:6]}-{number[6:]}"):
        assert oracle.standardise_format(shown) == number
        assert validate(shown).number == number


def test_reference_library_accepts_same_digit_numbers_without_region() -> None:
    # Documents why our same_digit rule cannot be checked against the library's unqualified is_valid.
    assert oracle.is_valid("4444444444")
    assert validate("4444444444", "live").reason == "same_digit"


# --- scalar and vectorised implementations agree -------------------------------------------------------

INTERESTING = st.sampled_from(list("0123456789 -'.,eE+\t\n\u00a0\u2011\u202f\ufeff９٣x"))
TEXT = st.text(alphabet=st.characters(codec="utf-8") | INTERESTING, max_size=24)


def decorate(number: str, style: str) -> str:
    match style:
        case "plain":
            return number
        case "spaced":
            return f"{number[:3]} {number[3:6]} {number[6:]}"
        case "hyphens":
            return f"{number[:3]}-{number[3:6]}-{number[6:]}"
        case "apostrophe":
            return f"'{number}"
        case "nbsp":
            return f"\u00a0{number}\u00a0"
        case "float":
            return f"{number}.0"
        case "scientific":
            return f"{int(number):.6E}"
        case "lost_zero":
            return str(int(number))
        case "fullwidth":
            return number.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})
        case "truncated":
            return number[:-1]
    raise AssertionError(style)


STYLES = st.sampled_from(
    [
        "plain",
        "spaced",
        "hyphens",
        "apostrophe",
        "nbsp",
        "float",
        "scientific",
        "lost_zero",
        "fullwidth",
        "truncated",
    ]
)
NUMBERS = uniform_between(0, 9_999_999_999).map(lambda n: f"{n:010d}")
FORMATTED = st.builds(
    decorate, NUMBERS | ANY_VALID | ENGLAND | valid_number(9_990_000_000, 9_999_999_998), STYLES
)


@settings(max_examples=300)
@given(values=st.lists(st.none() | TEXT, max_size=40), profile=st.sampled_from(PROFILES))
def test_expr_agrees_with_validate_on_arbitrary_text(values: list[str | None], profile: str) -> None:
    assert run_expr(values, profile) == [validate(v, profile) for v in values]  # type: ignore[arg-type]


@settings(max_examples=300)
@given(values=st.lists(FORMATTED, min_size=1, max_size=40), profile=st.sampled_from(PROFILES))
def test_expr_agrees_with_validate_on_formatted_numbers(values: list[str], profile: str) -> None:
    assert run_expr(values, profile) == [validate(v, profile) for v in values]  # type: ignore[arg-type]


@given(number=valid_number(9_990_000_000, 9_999_999_998), style=STYLES)
def test_formatting_outcomes(number: str, style: str) -> None:
    result = validate(decorate(number, style))
    expected = {
        "plain": NhsNumberResult(number, None, ()),
        "spaced": NhsNumberResult(number, None, ()),
        "hyphens": NhsNumberResult(number, None, ()),
        "apostrophe": NhsNumberResult(number, None, ()),
        "nbsp": NhsNumberResult(number, None, ()),
        "float": NhsNumberResult(number, None, ("float_suffix",)),
        "scientific": NhsNumberResult(None, "scientific_notation", ()),
        "lost_zero": NhsNumberResult(number, None, ()),  # no leading zero in the 999 range
        "fullwidth": NhsNumberResult(None, "not_10_digits", ()),
        "truncated": NhsNumberResult(None, "leading_zero_lost", ()),
    }[style]
    assert result == expected


def test_expr_works_on_expression_input_and_other_frames() -> None:
    frame = pl.DataFrame({"a": ["999 123 4012", None, "9434765919.0"]})
    out = frame.select(nhs_number_expr(pl.col("a").str.to_uppercase()).struct.unnest())
    assert out.rows() == [
        ("9991234012", None, None),
        (None, "empty", None),
        ("9434765919", None, "float_suffix"),
    ]


def test_expr_is_vectorised() -> None:
    plan = pl.LazyFrame({"v": ["9991234012"]}).select(nhs_number_expr("v")).explain()
    assert "python_udf" not in plan
    assert "map" not in plan.lower()
