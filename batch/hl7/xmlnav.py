"""Namespace-blind navigation by local name.

NHS replies arrive with or without the HL7 namespace and with repeated elements the XSD does not
allow, so readers select children by name and iterate over every match instead of indexing.
"""

from collections.abc import Iterable, Iterator
from typing import cast

from lxml import etree

from batch.hl7.namespaces import XSI_NS

_XSI_NIL = f"{{{XSI_NS}}}nil"


def local_name(element: etree._Element) -> str:
    """The tag without its namespace ("" for comments and processing instructions)."""
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def namespace(element: etree._Element) -> str | None:
    tag = element.tag
    if isinstance(tag, str) and tag.startswith("{"):
        return tag[1:].partition("}")[0]
    return None


def children(element: etree._Element, name: str) -> Iterator[etree._Element]:
    # lxml matches "{*}name" in C: any namespace or none.
    return element.iterchildren(f"{{*}}{name}")


def elements(element: etree._Element) -> Iterator[etree._Element]:
    """Element children only."""
    return (child for child in element if isinstance(child.tag, str))


def first(element: etree._Element | None, *names: str) -> etree._Element | None:
    """The first element reached by the path of local names, or None."""
    return next(iter(every(element, *names)), None)


def every(element: etree._Element | None, *names: str) -> list[etree._Element]:
    """Every element reached by the path, taking all matches at each step, in document order."""
    found: list[etree._Element] = [] if element is None else [element]
    for name in names:
        tag = f"{{*}}{name}"
        found = [child for parent in found for child in parent.iterchildren(tag)]
    return found


def descendants(element: etree._Element, name: str) -> Iterator[etree._Element]:
    return element.iter(f"{{*}}{name}")


def attr(element: etree._Element | None, name: str) -> str | None:
    """The attribute with surrounding blanks removed; None when absent or blank."""
    if element is None:
        return None
    value = element.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def first_attr(candidates: Iterable[etree._Element], name: str) -> str | None:
    """The first non-blank value of the attribute among the candidates."""
    return next((value for el in candidates if (value := attr(el, name)) is not None), None)


def text(element: etree._Element | None) -> str | None:
    """The element's own text, whitespace collapsed; None when empty.

    Text of child elements counts only when the element has none of its own (a name given in
    parts), so an unknown child element cannot leak into a value.
    """
    if element is None:
        return None
    own = (element.text or "") + "".join(child.tail or "" for child in element)
    # itertext yields str for a tree parsed from bytes; lxml-stubs types it str | bytes.
    text = "".join(cast("Iterator[str]", element.itertext()))
    joined = " ".join(own.split()) or " ".join(text.split())
    return joined or None


def is_null(element: etree._Element | None) -> bool:
    """True for an element carrying an HL7 `nullFlavor` or `xsi:nil="true"`."""
    if element is None:
        return False
    if attr(element, "nullFlavor") is not None:
        return True
    return (element.get(_XSI_NIL) or "").strip() in {"true", "1"}
