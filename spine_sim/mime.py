"""MIME multipart/related framing: strict CRLF framing out, the standard library's ``email`` parser in.

The simulator reads with ``email`` rather than a copy of the client's own reader, so a framing mistake the
client's reader tolerates in its own output is still caught here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

_CRLF = b"\r\n"
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# compat32 rather than policy.HTTP: the same framing rules, but plain-string headers instead of parsed header
# objects, which makes reading a query about fifteen times cheaper (measured: 0.15 ms against 2.4 ms).
_PARSER = BytesParser(policy=policy.compat32)
# Defects after which the parts cannot be trusted: no usable boundary, or a body cut short.
_FATAL_DEFECTS = ("NoBoundaryInMultipartDefect", "StartBoundaryNotFoundDefect", "CloseBoundaryNotFoundDefect")


class MimeError(ValueError):
    """A body that is not a readable multipart/related message."""


@dataclass(frozen=True)
class MimePart:
    content_id: str | None
    """Without angle brackets, lower-cased for comparison."""
    media_type: str
    content: bytes
    """With any Content-Transfer-Encoding undone."""


@dataclass(frozen=True)
class Related:
    parts: tuple[MimePart, ...]
    start: str | None
    """The ``start`` parameter (the root part's Content-Id), normalised like ``MimePart.content_id``."""

    @property
    def root(self) -> MimePart:
        """The part ``start`` names, else the first (RFC 2387 section 3.2)."""
        return next(
            (part for part in self.parts if self.start and part.content_id == self.start), self.parts[0]
        )


def normalise_content_id(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


def media_type(content_type: str) -> str:
    """The lower-cased type/subtype of a Content-Type value."""
    return content_type.partition(";")[0].strip().lower()


def build_related(parts: Sequence[tuple[str, bytes]], boundary: str) -> bytes:
    """A multipart body: parts are (Content-Id without brackets, XML content), sent 8bit with CRLF framing."""
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for content_id, content in parts:
        if delimiter in content or delimiter in content_id.encode("ascii"):
            raise ValueError("a MIME part contains the boundary delimiter")
        chunks += [
            delimiter,
            _CRLF,
            b"Content-Id: <",
            content_id.encode("ascii"),
            b">\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
            content,
            _CRLF,
        ]
    chunks += [delimiter, b"--", _CRLF]
    return b"".join(chunks)


def _part(message: Message) -> MimePart:
    content = message.get_payload(decode=True)
    if not isinstance(content, bytes):
        raise MimeError("a MIME part is itself multipart")
    content_id = message.get("content-id")
    return MimePart(
        normalise_content_id(str(content_id)) if content_id else None,
        message.get_content_type(),
        content,
    )


def read_related(content_type: str, body: bytes) -> Related:
    """The parts of a multipart/related body, given the HTTP Content-Type it came with."""
    if not _PRINTABLE.fullmatch(content_type):
        raise MimeError("the Content-Type header is not one line of printable ASCII")
    message = _PARSER.parsebytes(b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n" + body)
    if message.get_content_type() != "multipart/related":
        raise MimeError("Content-Type is not multipart/related")
    if any(type(defect).__name__ in _FATAL_DEFECTS for defect in message.defects):
        raise MimeError("multipart body without a usable boundary or without its closing delimiter")
    payload = message.get_payload()
    parts = (
        tuple(_part(part) for part in payload if isinstance(part, Message))
        if isinstance(payload, list)
        else ()
    )
    if not parts:
        raise MimeError("multipart body without parts")
    start = message.get_param("start")
    return Related(parts, normalise_content_id(str(start)) if isinstance(start, str) and start else None)
