"""Hardened parsing of untrusted XML: no entities, no DTDs, no network."""

from lxml import etree


class XmlError(ValueError):
    """A document that is not well-formed XML, or that carries a DTD."""


# One parser for the process: the simulator parses on a single event-loop thread, and lxml parsers are
# reusable between (not during) parses.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted bytes; a DOCTYPE is refused outright, since that is how entity attacks start."""
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"not well-formed XML: {exc.msg}") from None
    # getattr: lxml-stubs lacks DocInfo.doctype, which lxml has always had.
    if getattr(root.getroottree().docinfo, "doctype", ""):
        raise XmlError("XML with a DOCTYPE is refused")
    return root
