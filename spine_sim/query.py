"""Reading an incoming ``QUPC_IN000006GB01`` the way Spine's query check would: tolerantly, by local name.

Only what the simulator needs: the ids a reply refers to, the NHS number, the sender's ASID, and every
scheduled-care flag, so that the notification detector sees exactly what was sent.
"""

from __future__ import annotations

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


def _any(*names: str) -> str:
    """An ElementPath matching these child local names in any namespace or none ("{*}" is lxml's)."""
    return "/".join(f"{{*}}{name}" for name in names)


# Matched by lxml in C: the reader runs once per query.
_MESSAGE = _any(QUERY_INTERACTION)
_QUERY = _any("cP-ISNHSQuery")
_PARAMETERS = _any("queryByParameter")
_ID = _any("id")
_FLAG_VALUES = _any("accessEventType", "value")
_NUMBER_VALUES = _any("person.NHSnumber", "value")
_SENDER_IDS = _any("communicationFunctionSnd", "device", "id")


def _first(element: etree._Element | None, path: str) -> etree._Element | None:
    return None if element is None else element.find(path)


def _attr(element: etree._Element | None, name: str) -> str | None:
    value = None if element is None else element.get(name)
    return (value.strip() or None) if value is not None else None


def parse_query(hl7: bytes) -> ParsedQuery:
    """What the query says; a missing part reads as None. Raises QueryReadError only for non-XML."""
    try:
        root = parse_xml(hl7)
    except XmlError as exc:
        raise QueryReadError(str(exc)) from None
    message = next(root.iter(_MESSAGE), root)
    query = next(message.iter(_QUERY), None)
    every_parameters = list(root.iter(_PARAMETERS))
    # The number is read from the query act only; a flag anywhere counts, so a stray copy is noticed.
    query_parameters = every_parameters if query is None else list(query.iter(_PARAMETERS))
    flags = tuple(
        value
        for parameters in every_parameters
        for node in parameters.findall(_FLAG_VALUES)
        if (value := node.get("value")) is not None
    )
    numbers = (
        number
        for parameters in query_parameters
        for node in parameters.findall(_NUMBER_VALUES)
        if (number := _attr(node, "extension")) is not None
    )
    return ParsedQuery(
        message_id=_attr(_first(message, _ID), "root"),
        query_id=_attr(_first(query, _ID), "root"),
        nhs_number=next(numbers, None),
        sender_asid=_sender_asid(message),
        scheduled_care_flags=flags,
    )


def _sender_asid(message: etree._Element) -> str | None:
    ids = message.findall(_SENDER_IDS)
    preferred = [node for node in ids if _attr(node, "root") == OID_ASID]
    return next((asid for node in (*preferred, *ids) if (asid := _attr(node, "extension"))), None)
