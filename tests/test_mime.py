"""multipart/related framing: strict building, tolerant reading, Content-Type parameters and root selection."""

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch import mime
from batch.mime import (
    MAX_PARTS,
    ContentType,
    MimeError,
    MimePart,
    TooManyParts,
    _delimiters,
    build_related,
    contains_delimiter,
    normalise_content_id,
    parse_content_type,
    parse_related,
    root_part,
    split_multipart,
)

BOUNDARY = "--=_MIME-Boundary"
RELATED = ContentType("multipart/related", {"boundary": BOUNDARY})
SOAP = b'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope/>'
HL7 = '<x xmlns="urn:hl7-org:v3"><name>Zoë</name></x>'.encode()
NO_PARTS = "multipart body without parts or without its closing delimiter"


def _part(content_id: str, content: bytes, *, encoding: str = "8bit", nl: bytes = b"\r\n") -> bytes:
    return (
        b"----=_MIME-Boundary" + nl
        + f"Content-Id: <{content_id}>".encode() + nl
        + b"Content-Type: text/xml; charset=UTF-8" + nl
        + f"Content-Transfer-Encoding: {encoding}".encode() + nl + nl
        + content + nl
    )  # fmt: skip


def _multipart(*parts: bytes, nl: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + b"----=_MIME-Boundary--" + nl


# --- building ---------------------------------------------------------------------------------------------


def test_build_related_writes_exact_crlf_framing() -> None:
    body = build_related([("ebXMLHeader@spine.nhs.uk", SOAP), ("a@spine.nhs.uk", HL7)], BOUNDARY)
    assert body == (
        b"----=_MIME-Boundary\r\n"
        b"Content-Id: <ebXMLHeader@spine.nhs.uk>\r\n"
        b"Content-Type: text/xml; charset=UTF-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + SOAP + b"\r\n"
        b"----=_MIME-Boundary\r\n"
        b"Content-Id: <a@spine.nhs.uk>\r\n"
        b"Content-Type: text/xml; charset=UTF-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + HL7 + b"\r\n"
        b"----=_MIME-Boundary--\r\n"
    )


def test_build_related_part_type_can_be_chosen() -> None:
    body = build_related([("a@x", b"<a/>")], BOUNDARY, part_type="application/xml")
    assert b"\r\nContent-Type: application/xml\r\n" in body


def test_built_body_splits_back_into_its_parts() -> None:
    parts = [("ebXMLHeader@spine.nhs.uk", SOAP), ("A@Spine.nhs.uk", HL7), ("empty@x", b"")]
    read = split_multipart(build_related(parts, BOUNDARY), BOUNDARY)
    assert [(part.content_id, part.content) for part in read] == [
        ("ebxmlheader@spine.nhs.uk", SOAP),
        ("a@spine.nhs.uk", HL7),
        ("empty@x", b""),
    ]
    assert all(part.content_type == "text/xml; charset=UTF-8" for part in read)


def test_content_containing_the_delimiter_is_refused() -> None:
    content = b"<a>\r\n----=_MIME-Boundary--\r\n</a>"
    assert contains_delimiter(content, BOUNDARY)
    assert not contains_delimiter(b"<a>--=_MIME-Boundar</a>", BOUNDARY)
    with pytest.raises(ValueError, match=r"^a MIME part contains the boundary delimiter$"):
        build_related([("a@x", content)], BOUNDARY)


@pytest.mark.parametrize(
    "content_id",
    ["", "a@x>\r\nX-Injected: 1", "<a@x>", "a b@x", "zoë@x"],
)
def test_unsafe_content_ids_are_refused(content_id: str) -> None:
    with pytest.raises(
        ValueError, match=r"^a Content-Id must be printable ASCII without spaces or angle brackets$"
    ):
        build_related([(content_id, b"<a/>")], BOUNDARY)


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends-in-space ", "line\r\nbreak", "naïve"])
def test_invalid_boundaries_are_refused(boundary: str) -> None:
    with pytest.raises(ValueError, match=r"^the MIME boundary is not a valid RFC 2046 boundary$"):
        build_related([("a@x", b"<a/>")], boundary)


def test_a_body_needs_parts_and_a_one_line_part_type() -> None:
    with pytest.raises(ValueError, match=r"^a multipart body needs at least one part$"):
        build_related([], BOUNDARY)
    for part_type in ("text/xml\r\nX-Injected: 1", "", "  ", "text/xml; name=zoë", "text/xml\x7f"):
        with pytest.raises(ValueError, match=r"^the part Content-Type must be one line of printable ASCII$"):
            build_related([("a@x", b"<a/>")], BOUNDARY, part_type=part_type)


# --- Content-Type parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        'multipart/related; boundary="--=_MIME-Boundary"; type="text/xml"; start="<ebXMLHeader@spine.nhs.uk>"',
        'multipart/related; type="text/xml"; start="<ebXMLHeader@spine.nhs.uk>"; boundary="--=_MIME-Boundary"',
        "multipart/related; start=<ebXMLHeader@spine.nhs.uk>; type=text/xml; boundary=--=_MIME-Boundary",
        'Multipart/Related; BOUNDARY="--=_MIME-Boundary"; Type="text/xml"; Start="<ebXMLHeader@spine.nhs.uk>"',
    ],
)
def test_content_type_parameters_in_any_order_quoting_or_case(value: str) -> None:
    parsed = parse_content_type(value)
    assert parsed.media_type == "multipart/related"
    assert parsed.params.keys() == {"boundary", "type", "start"}
    assert parsed.params["boundary"] == "--=_MIME-Boundary"
    assert parsed.params["type"] == "text/xml"
    # email drops the angle brackets of an unquoted value; Content-Ids compare without them anyway.
    assert normalise_content_id(parsed.params["start"]) == "ebxmlheader@spine.nhs.uk"


def test_content_type_unpacks_and_keeps_extra_parameters() -> None:
    media_type, params = parse_content_type("text/xml; charset=UTF-8")
    assert (media_type, params) == ("text/xml", {"charset": "UTF-8"})


@pytest.mark.parametrize("value", ["", "   ", "garbage", "text"])
def test_unreadable_content_type_has_no_media_type(value: str) -> None:
    assert parse_content_type(value).media_type == ""


def test_an_explicit_text_plain_is_kept() -> None:
    assert parse_content_type("text/plain; charset=us-ascii").media_type == "text/plain"


# --- splitting parts --------------------------------------------------------------------------------------


def test_lf_line_ends_a_preamble_and_an_epilogue_are_tolerated() -> None:
    body = (
        b"This is a MIME message\n"
        + _multipart(_part("a@x", SOAP, nl=b"\n"), _part("b@x", HL7, nl=b"\n"), nl=b"\n")
        + b"epilogue, ignored\n"
    )
    parts = split_multipart(body, BOUNDARY)
    assert [(part.content_id, part.content) for part in parts] == [("a@x", SOAP), ("b@x", HL7)]
    assert parts[0].headers == {
        "content-id": "<a@x>",
        "content-type": "text/xml; charset=UTF-8",
        "content-transfer-encoding": "8bit",
    }


def test_delimiters_may_carry_trailing_blanks() -> None:
    body = _multipart(_part("a@x", SOAP)).replace(b"Boundary\r\n", b"Boundary \t\r\n")
    assert split_multipart(body, BOUNDARY)[0].content == SOAP


def test_a_delimiter_is_only_recognised_at_a_line_start() -> None:
    content = b"<a>text ----=_MIME-Boundary-- more</a>"
    assert split_multipart(_multipart(_part("a@x", content)), BOUNDARY)[0].content == content


def test_content_keeps_its_inner_line_ends() -> None:
    content = b"<a>\r\n<b/>\n</a>\r\n"
    assert split_multipart(_multipart(_part("a@x", content)), BOUNDARY)[0].content == content


def test_part_headers_are_lower_cased_and_folded_lines_joined() -> None:
    raw = (
        b"----=_MIME-Boundary\r\n"
        b"CONTENT-ID: <A@x>\r\n"
        b"Content-Type: text/xml;\r\n"
        b'\tcharset="UTF-8"\r\n'
        b"\r\n<a/>\r\n"
        b"----=_MIME-Boundary--\r\n"
    )
    (part,) = split_multipart(raw, BOUNDARY)
    assert part.headers == {"content-id": "<A@x>", "content-type": 'text/xml; charset="UTF-8"'}
    assert part.content_id == "a@x"
    assert part.content == b"<a/>"


@pytest.mark.parametrize("nl", [b"\r\n", b"\n"])
def test_a_part_without_headers_is_read(nl: bytes) -> None:
    body = b"----=_MIME-Boundary" + nl + nl + b"<a/>" + nl + b"----=_MIME-Boundary--" + nl
    (part,) = split_multipart(body, BOUNDARY)
    assert part == MimePart({}, b"<a/>")
    assert part.content_id is None
    assert part.content_type is None


def test_a_colon_in_a_header_value_stays_in_the_value() -> None:
    raw = (
        b"----=_MIME-Boundary\r\n"
        b"Content-Id: <urn:uuid:a@x>\r\n"
        b'Content-Type: text/xml; start="a:b"\r\n'
        b"\r\n<a/>\r\n"
        b"----=_MIME-Boundary--\r\n"
    )
    (part,) = split_multipart(raw, BOUNDARY)
    assert part.headers == {"content-id": "<urn:uuid:a@x>", "content-type": 'text/xml; start="a:b"'}


def test_base64_content_is_decoded() -> None:
    encoded = base64.encodebytes(HL7).replace(b"\n", b"\r\n").rstrip()
    assert split_multipart(_multipart(_part("a@x", encoded, encoding="base64")), BOUNDARY)[0].content == HL7


def test_quoted_printable_content_is_decoded() -> None:
    encoded = b"<name>Zo=C3=AB</name>=\r\n<x/>"
    (part,) = split_multipart(_multipart(_part("a@x", encoded, encoding="Quoted-Printable")), BOUNDARY)
    assert part.content == "<name>Zoë</name><x/>".encode()


@pytest.mark.parametrize("encoding", ["7bit", "8BIT", "binary"])
def test_identity_encodings_leave_content_alone(encoding: str) -> None:
    body = _multipart(_part("a@x", b"<a>=C3</a>", encoding=encoding))
    assert split_multipart(body, BOUNDARY)[0].content == b"<a>=C3</a>"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(_part("a@x", SOAP), NO_PARTS, id="no-closing-delimiter"),
        pytest.param(_part("a@x", SOAP) + _part("b@x", HL7), NO_PARTS, id="parts-but-no-closing-delimiter"),
        pytest.param(b"----=_MIME-Boundary--\r\n", NO_PARTS, id="no-parts"),
        pytest.param(b"", NO_PARTS, id="empty"),
        pytest.param(b"<a/>", NO_PARTS, id="no-delimiters"),
        pytest.param(
            b"----=_MIME-Boundary\r\nno header separator\r\n----=_MIME-Boundary--\r\n",
            "MIME part without a blank line after its headers",
            id="no-blank-line",
        ),
        pytest.param(
            b"----=_MIME-Boundary\r\nnot a header\r\n\r\n<a/>\r\n----=_MIME-Boundary--\r\n",
            "malformed MIME part header line",
            id="malformed-header-line",
        ),
        pytest.param(
            b"----=_MIME-Boundary\r\n: no name\r\n\r\n<a/>\r\n----=_MIME-Boundary--\r\n",
            "malformed MIME part header line",
            id="header-without-name",
        ),
        pytest.param(
            _multipart(_part("a@x", b"not base64!", encoding="base64")),
            "MIME part with invalid base64 content",
            id="bad-base64",
        ),
        pytest.param(
            _multipart(_part("a@x", b"PGEv*Pg==", encoding="base64")),
            "MIME part with invalid base64 content",
            id="base64-with-a-stray-character",
        ),
        pytest.param(
            _multipart(_part("a@x", SOAP, encoding="x-uuencode")),
            "MIME part with an unsupported Content-Transfer-Encoding",
            id="uuencode",
        ),
    ],
)
def test_unreadable_multipart_bodies_raise(body: bytes, reason: str) -> None:
    with pytest.raises(MimeError, match=f"^{re.escape(reason)}$"):
        split_multipart(body, BOUNDARY)


def _regex_delimiters(body: bytes, boundary: str) -> list[tuple[int, int, bool]]:
    """The delimiter rule as the regular expression it replaced: the oracle for the bytes.find scanner."""
    pattern = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    found = []
    for match in pattern.finditer(body):
        found.append((match.start(), match.end(), bool(match.group(1))))
        if match.group(1):
            break
    return found


_PIECES = st.sampled_from(
    [b"----=_MIME-Boundary", b"--", b"-", b"\r\n", b"\n", b"\r", b" ", b"\t", b"x", b"<a/>", b"H: v\r\n\r\n"]
)


@given(st.lists(_PIECES, max_size=30).map(b"".join))
def test_delimiters_are_found_as_the_regular_expression_found_them(body: bytes) -> None:
    expected = _regex_delimiters(body, BOUNDARY)
    try:
        found = _delimiters(body, BOUNDARY.encode(), max_parts=1000)
    except MimeError:
        pytest.fail("no part cap was reached")
    assert found == expected


def _many_parts(count: int, *, bad_first_header: bool = False) -> bytes:
    first = b"----=_MIME-Boundary\r\nnot a header\r\n\r\n<a/>\r\n" if bad_first_header else b""
    rest = b"".join(_part(f"p{i}@x", b"") for i in range(count - (1 if bad_first_header else 0)))
    return _multipart(first + rest)


def test_up_to_the_part_cap_is_read() -> None:
    assert len(split_multipart(_many_parts(MAX_PARTS), BOUNDARY)) == MAX_PARTS


@pytest.mark.parametrize("count", [MAX_PARTS + 1, 10_000])
def test_more_parts_than_the_cap_are_refused(count: int) -> None:
    with pytest.raises(TooManyParts, match=f"^multipart body with more than {MAX_PARTS} parts$"):
        split_multipart(_many_parts(count), BOUNDARY)
    with pytest.raises(MimeError, match=f"^multipart body with more than {MAX_PARTS} parts$"):
        parse_related(RELATED, _many_parts(count))


def test_the_part_cap_is_checked_before_any_part_is_read() -> None:
    # The first part's header is unreadable, but the cap refuses the body before any part header is parsed.
    with pytest.raises(MimeError, match="more than"):
        split_multipart(_many_parts(MAX_PARTS + 1, bad_first_header=True), BOUNDARY)
    with pytest.raises(MimeError, match="header line"):
        split_multipart(_many_parts(MAX_PARTS, bad_first_header=True), BOUNDARY)


def test_the_cap_can_be_raised_by_the_caller() -> None:
    assert len(split_multipart(_many_parts(10), BOUNDARY, max_parts=10)) == 10


def test_a_non_ascii_boundary_cannot_be_read() -> None:
    with pytest.raises(MimeError, match=r"^MIME boundary is not ASCII$"):
        split_multipart(b"", "naïve")


def test_mime_error_is_a_value_error() -> None:
    assert issubclass(MimeError, ValueError)


# --- multipart/related ------------------------------------------------------------------------------------


def test_parse_related_returns_the_parts_in_order() -> None:
    parts = parse_related(RELATED, _multipart(_part("a@x", SOAP), _part("b@x", HL7)))
    assert [part.content_id for part in parts] == ["a@x", "b@x"]


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        (ContentType("multipart/mixed", {"boundary": BOUNDARY}), "Content-Type is not multipart/related"),
        (ContentType("text/xml", {}), "Content-Type is not multipart/related"),
        (ContentType("", {}), "Content-Type is not multipart/related"),
        (ContentType("multipart/related", {"type": "text/xml"}), "multipart/related without a boundary"),
        (ContentType("multipart/related", {"boundary": ""}), "multipart/related without a boundary"),
    ],
)
def test_parse_related_needs_multipart_related_with_a_boundary(
    content_type: ContentType, reason: str
) -> None:
    with pytest.raises(MimeError, match=f"^{re.escape(reason)}$"):
        parse_related(content_type, _multipart(_part("a@x", SOAP)))


PARTS = [MimePart({"content-id": "<first@x>"}, b"1"), MimePart({"content-id": "<ebXMLHeader@x>"}, b"2")]


@pytest.mark.parametrize("start", ["<ebXMLHeader@x>", "ebXMLHeader@x", " <EBXMLHEADER@X> "])
def test_start_names_the_root_part(start: str) -> None:
    assert root_part(PARTS, start).content == b"2"


@pytest.mark.parametrize("start", [None, "", "<missing@x>"])
def test_without_a_matching_start_the_first_part_is_the_root(start: str | None) -> None:
    assert root_part(PARTS, start).content == b"1"


def test_root_part_of_nothing_raises() -> None:
    with pytest.raises(MimeError, match=r"^multipart body without parts$"):
        root_part([], None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("<A@Spine.NHS.uk>", "a@spine.nhs.uk"), ("  < a@x >  ", "a@x"), ("a@x", "a@x")],
)
def test_content_ids_compare_without_brackets_blanks_or_case(value: str, expected: str) -> None:
    assert normalise_content_id(value) == expected


# --- the Content-Type fast path agrees with the standard library's reading --------------------------------

_CONTENT_TYPES = [
    'multipart/related; boundary="--=_MIME-Boundary"; type="text/xml"; start="<ebXMLHeader@spine.nhs.uk>"',
    "multipart/related;boundary=abc;type=text/xml",
    'Multipart/Related; Boundary="a b"',
    "text/xml; charset=UTF-8",
    "text/xml",
    "  application/xml ;charset=utf-8 ; ",
    'multipart/related; boundary="a\\"b"',  # an escaped quote: the slow path
    "multipart/related; boundary*0=abc; boundary*1=def",  # RFC 2231: the slow path
    "text/plain",
    "",
    "garbage",
    "text/xml; charset",
]


def _named(content_type: mime.ContentType) -> mime.ContentType:
    # The email parser reads a trailing ";" as a parameter with no name; the fast path, as nothing.
    return mime.ContentType(content_type.media_type, {k: v for k, v in content_type.params.items() if k})


@pytest.mark.parametrize("value", _CONTENT_TYPES)
def test_the_content_type_fast_path_reads_as_the_email_parser_does(value: str) -> None:
    assert mime.parse_content_type(value) == _named(mime._parse_content_type_email(value))


@settings(max_examples=300, deadline=None)
@given(
    media=st.from_regex(r"[a-zA-Z][a-zA-Z0-9.+-]{0,10}/[a-zA-Z][a-zA-Z0-9.+-]{0,10}", fullmatch=True),
    params=st.lists(
        st.tuples(
            st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{0,8}", fullmatch=True),
            st.from_regex(r"[a-zA-Z0-9<>@=:/ ._-]{1,20}", fullmatch=True),
            st.booleans(),
        ),
        max_size=4,
        unique_by=lambda p: p[0].lower(),
    ),
)
def test_simple_content_types_read_alike(media: str, params: list[tuple[str, str, bool]]) -> None:
    parts = [media]
    for name, value, quoted in params:
        needs_quotes = quoted or any(c in value for c in ' <>@=:/"')
        parts.append(f'{name}="{value}"' if needs_quotes else f"{name}={value}")
    value = "; ".join(parts)
    assert mime.parse_content_type(value) == mime._parse_content_type_email(value)
