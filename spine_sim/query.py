"""Reading an incoming ``QUPC_IN000006GB01`` the way Spine's query check would: tolerantly, by local name.

Only what the simulator needs: the ids a reply refers to, the NHS number, the sender's ASID, and every
scheduled-care flag, so that the notification detector sees exactly what was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

from spine_sim.hl7 import OID_ASID, QUERY_INTERACTION
from spine_sim.xmlsafe import XmlError, parse_xml


class QueryReadError(ValueError):
    """The HL7 part is not well-formed XML (or carries a DTD)."""


@dataclass(frozen=True)
class ParsedQuery:
    message_id: str | None
    query_id: str | None
    nhs_number: str | None
    sender_asid: str | None
    # Every accessEventType/value/@value under any queryByParameter, in document order. Anything other than
    # exactly ("false",) is an unscheduled query.
    scheduled_care_flags: tuple[str, ...]


def _local(element: etree._Element) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _named(root: etree._Element, name: str) -> Iterator[etree._Element]:
    """Descendants (and ``root`` itself) with this local name, in any namespace or none."""
    return (node for node in root.iter() if _local(node) == name)


def _path(element: etree._Element | None, *names: str) -> list[etree._Element]:
    """Every element reached by a path of child local names, taking all matches at each step."""
    found = [] if element is None else [element]
    for name in names:
        found = [child for parent in found for child in parent if _local(child) == name]
    return found


def _attr(element: etree._Element | None, name: str) -> str | None:
    value = None if element is None else element.get(name)
    return (value.strip() or None) if value is not None else None


def parse_query(hl7: bytes) -> ParsedQuery:
    """What the query says; a missing part reads as None. Raises QueryReadError only for non-XML."""
    try:
        root = parse_xml(hl7)
    except XmlError as exc:
        raise QueryReadError(str(exc)) from None
    message = root if _local(root) == QUERY_INTERACTION else next(_named(root, QUERY_INTERACTION), root)
    query = next(_named(message, "cP-ISNHSQuery"), None)
    every_parameters = list(_named(root, "queryByParameter"))
    # The number is read from the query act only; a flag anywhere counts, so a stray copy is noticed.
    query_parameters = every_parameters if query is None else list(_named(query, "queryByParameter"))
    flags = tuple(
        value
        for parameters in every_parameters
        for node in _path(parameters, "accessEventType", "value")
        if (value := node.get("value")) is not None
    )
    numbers = (
        number
        for parameters in query_parameters
        for node in _path(parameters, "person.NHSnumber", "value")
        if (number := _attr(node, "extension")) is not None
    )
    return ParsedQuery(
        message_id=_attr(next(iter(_path(message, "id")), None), "root"),
        query_id=_attr(next(iter(_path(query, "id")), None), "root"),
        nhs_number=next(numbers, None),
        sender_asid=_sender_asid(message),
        scheduled_care_flags=flags,
    )


def _sender_asid(message: etree._Element) -> str | None:
    ids = _path(message, "communicationFunctionSnd", "device", "id")
    preferred = [node for node in ids if _attr(node, "root") == OID_ASID]
    return next((asid for node in (*preferred, *ids) if (asid := _attr(node, "extension"))), None)
