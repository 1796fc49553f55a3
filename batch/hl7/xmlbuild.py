"""Small lxml helpers for building HL7 V3 documents in the default HL7 namespace."""

from lxml import etree

from batch.hl7.namespaces import HL7_NS, NPFIT_NS, OID_TEMPLATE_CONTENT_ID

NSMAP = {None: HL7_NS, "npfitlc": NPFIT_NS}


def hl7_root(tag: str) -> etree._Element:
    """A document element with `hl7` as default namespace and `npfitlc` declared once at the top."""
    return etree.Element(f"{{{HL7_NS}}}{tag}", nsmap=NSMAP)  # type: ignore[arg-type]  # lxml-stubs refuses the None (default) prefix


def sub(parent: etree._Element, tag: str, /, text: str | None = None, **attrs: str) -> etree._Element:
    """Append an HL7 element; attribute values go through lxml, so they are escaped, never formatted."""
    element = etree.SubElement(parent, f"{{{HL7_NS}}}{tag}")
    for key, value in attrs.items():
        element.set(key, value)
    if text is not None:
        element.text = text
    return element


def template_slot(parent: etree._Element, template: str) -> etree._Element:
    """The `npfitlc:contentId` marker, then the template element (docs/protocol.md#p1, "Template slot")."""
    marker = etree.SubElement(parent, f"{{{NPFIT_NS}}}contentId")
    marker.set("root", OID_TEMPLATE_CONTENT_ID)
    head, _, tail = template.rpartition(".")
    marker.set("extension", f"{head}#{tail}")
    return sub(parent, template)


_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def serialise(root: etree._Element) -> bytes:
    """UTF-8 bytes behind the conventional double-quoted declaration (lxml's own uses single quotes)."""
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)
