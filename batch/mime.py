"""MIME multipart/related framing for ebXML messages (RFC 2046, RFC 2387).

Building writes strict CRLF framing; reading is tolerant of what other senders produce (LF line ends, a
preamble, folded part headers, base64 or quoted-printable parts). No knowledge of SOAP or ebXML.
"""

import base64
import binascii
import itertools
import quopri
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from typing import NamedTuple

_CRLF = b"\r\n"
# RFC 2046 section 5.1.1: 1-70 characters, the last not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 2392 Content-Ids are addr-specs: printable ASCII, no spaces, no angle brackets.
_CONTENT_ID = re.compile(r"[\x21-\x3B\x3D\x3F-\x7E]+")
# An ebXML message has the header and one payload; a few more are tolerated, thousands are an attack.
MAX_PARTS = 4


class MimeError(ValueError):
    """A multipart body or one of its parts cannot be read."""


class TooManyParts(MimeError):
    """A multipart body with more parts than the reader accepts."""


class ContentType(NamedTuple):
    media_type: str
    """Lower-cased type/subtype; "" when the value cannot be read."""
    params: dict[str, str]
    """Parameters by lower-cased name, values unquoted."""


@dataclass(frozen=True)
class MimePart:
    headers: dict[str, str]
    """Part headers by lower-cased name, folded lines joined."""
    content: bytes
    """The content with its Content-Transfer-Encoding undone."""

    @property
    def content_id(self) -> str | None:
        value = self.headers.get("content-id")
        return normalise_content_id(value) if value else None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def normalise_content_id(value: str) -> str:
    """A Content-Id (or a cid: URL's body) in the form used for comparison."""
    # Compared without angle brackets; case is ignored to tolerate senders that change it.
    return value.strip().strip("<>").strip().lower()


# A media type and simple parameters (token or quoted values without escapes): what every sender we have met
# writes. Anything else (escapes, RFC 2231 continuations, odd spacing the simple form refuses) is read by the
# standard library's email parser, which costs about 50 us a call.
_MIME_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 (a token pattern, not a password)
_SIMPLE_TYPE = re.compile(
    rf"\s*({_MIME_TOKEN}/{_MIME_TOKEN})\s*((?:;\s*{_MIME_TOKEN}\s*=\s*(?:{_MIME_TOKEN}|\"[^\"\\\\]*\")\s*)*);?\s*"
)
_SIMPLE_PARAM = re.compile(rf";\s*({_MIME_TOKEN})\s*=\s*({_MIME_TOKEN}|\"[^\"\\\\]*\")")


def parse_content_type(value: str) -> ContentType:
    simple = _SIMPLE_TYPE.fullmatch(value)
    if simple is not None and "*" not in simple.group(2):
        params = {name.lower(): raw.strip('"') for name, raw in _SIMPLE_PARAM.findall(simple.group(2))}
        return ContentType(simple.group(1).lower(), params)
    return _parse_content_type_email(value)


def _parse_content_type_email(value: str) -> ContentType:
    message = Message()
    message["Content-Type"] = value
    # email returns text/plain for anything it cannot read; treat that as "no type" unless it was given.
    media_type = message.get_content_type()
    if media_type == "text/plain" and not value.strip().lower().startswith("text/plain"):
        media_type = ""
    params = {name.lower(): param for name, param in (message.get_params() or [])[1:]}
    return ContentType(media_type, params)


# --- building ---------------------------------------------------------------------------------------------


def _delimiter(boundary: str) -> bytes:
    return b"--" + boundary.encode("ascii")


def contains_delimiter(content: bytes, boundary: str) -> bool:
    """Whether content could be mistaken for a part delimiter if framed with this boundary."""
    # Conservative: readers only honour a delimiter at a line start, but anywhere is refused.
    return _delimiter(boundary) in content


def build_related(
    parts: Sequence[tuple[str, bytes]], boundary: str, *, part_type: str = "text/xml; charset=UTF-8"
) -> bytes:
    """A multipart body with CRLF framing; parts are (Content-Id without brackets, content), sent 8bit.

    The multipart/related Content-Type header (with its start and type parameters) is the caller's.
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError("the MIME boundary is not a valid RFC 2046 boundary")
    if not parts:
        raise ValueError("a multipart body needs at least one part")
    if any(ord(char) < 0x20 or ord(char) > 0x7E for char in part_type) or not part_type.strip():
        raise ValueError("the part Content-Type must be one line of printable ASCII")
    delimiter = _delimiter(boundary)
    chunks: list[bytes] = []
    for content_id, content in parts:
        if not _CONTENT_ID.fullmatch(content_id):
            raise ValueError("a Content-Id must be printable ASCII without spaces or angle brackets")
        if delimiter in content:
            raise ValueError("a MIME part contains the boundary delimiter")
        chunks += [
            delimiter + _CRLF,
            b"Content-Id: <" + content_id.encode("ascii") + b">" + _CRLF,
            b"Content-Type: " + part_type.encode("ascii") + _CRLF,
            b"Content-Transfer-Encoding: 8bit" + _CRLF,
            _CRLF,
            content,
            _CRLF,
        ]
    chunks.append(delimiter + b"--" + _CRLF)
    return b"".join(chunks)


# --- reading ----------------------------------------------------------------------------------------------


def _split_headers(raw: bytes) -> tuple[bytes, bytes]:
    if raw.startswith(b"\r\n"):
        return b"", raw[2:]
    if raw.startswith(b"\n"):
        return b"", raw[1:]
    positions = [(raw.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [(pos, sep) for pos, sep in positions if pos >= 0]
    if not found:
        raise MimeError("MIME part without a blank line after its headers")
    pos, sep = min(found)
    return raw[:pos], raw[pos + len(sep) :]


def _parse_part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for line in block.decode("latin-1").splitlines():
        if line[:1] in (" ", "\t") and last is not None:
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MimeError("malformed MIME part header line")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


def _decode_transfer(headers: dict[str, str], content: bytes) -> bytes:
    encoding = headers.get("content-transfer-encoding", "8bit").strip().lower()
    if encoding in ("7bit", "8bit", "binary"):
        return content
    if encoding == "base64":
        try:
            return base64.b64decode(b"".join(content.split()), validate=True)
        except binascii.Error:
            raise MimeError("MIME part with invalid base64 content") from None
    if encoding == "quoted-printable":
        return quopri.decodestring(content)
    raise MimeError("MIME part with an unsupported Content-Transfer-Encoding")


def _delimiters(body: bytes, marker: bytes, max_parts: int) -> list[tuple[int, int, bool]]:
    """(start, end, closing) of each delimiter line, up to the closing one; at most max_parts + 1 of them.

    A delimiter starts a line (its preceding line end belongs to it), is `--` and the boundary, then `--` when
    it closes, optional blanks and a line end or the end of the body (read tolerantly; RFC 2046 section 5.1.1).
    """
    needle = b"--" + marker
    size = len(body)
    found: list[tuple[int, int, bool]] = []
    last_end = 0
    position = body.find(needle)
    while position >= 0:
        start = -1
        if position == 0:
            start = 0
        elif body[position - 1] == 0x0A and position - 1 >= last_end:
            start = (
                position - 2
                if position >= 2 and body[position - 2] == 0x0D and position - 2 >= last_end
                else position - 1
            )
        end = position + len(needle)
        closing = body.startswith(b"--", end)
        if closing:
            end += 2
        while end < size and body[end] in (0x20, 0x09):
            end += 1
        if end < size:
            if body[end] == 0x0A:
                end += 1
            elif body[end] == 0x0D and end + 1 < size and body[end + 1] == 0x0A:
                end += 2
            else:
                start = -1
        if start < 0:
            position = body.find(needle, position + 1)
            continue
        found.append((start, end, closing))
        if closing:
            break
        if len(found) > max_parts:
            raise TooManyParts(f"multipart body with more than {max_parts} parts")
        last_end = end
        position = body.find(needle, end)
    return found


def split_multipart(body: bytes, boundary: str, *, max_parts: int = MAX_PARTS) -> list[MimePart]:
    """The parts of a multipart body of any subtype, in order; preamble and epilogue are ignored.

    A body with more than `max_parts` parts is refused as soon as the delimiter after the last allowed part
    is found, before any part is read.
    """
    try:
        marker = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MimeError("MIME boundary is not ASCII") from None
    delimiters = _delimiters(body, marker, max_parts)
    parts: list[MimePart] = []
    for current, following in itertools.pairwise(delimiters):
        header_block, content = _split_headers(body[current[1] : following[0]])
        headers = _parse_part_headers(header_block)
        parts.append(MimePart(headers, _decode_transfer(headers, content)))
    # _delimiters stops at the closing delimiter: when there is one, it is the last.
    if not parts or not delimiters[-1][2]:
        raise MimeError("multipart body without parts or without its closing delimiter")
    return parts


def parse_related(content_type: ContentType, body: bytes, *, max_parts: int = MAX_PARTS) -> list[MimePart]:
    """The parts of a multipart/related body (at most `max_parts`); root_part picks the root among them."""
    if content_type.media_type != "multipart/related":
        raise MimeError("Content-Type is not multipart/related")
    boundary = content_type.params.get("boundary")
    if not boundary:
        raise MimeError("multipart/related without a boundary")
    return split_multipart(body, boundary, max_parts=max_parts)


def root_part(parts: Sequence[MimePart], start: str | None) -> MimePart:
    """The part the start parameter names, else the first part (RFC 2387 section 3.2)."""
    if not parts:
        raise MimeError("multipart body without parts")
    if start:
        wanted = normalise_content_id(start)
        for part in parts:
            if part.content_id == wanted:
                return part
    return parts[0]
