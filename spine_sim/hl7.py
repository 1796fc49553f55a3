"""HL7 V3 as the simulator writes it: namespaces, interactions, OIDs, element helpers (docs/protocol.md#p1).

The simulator keeps its own copy of these values rather than the client's, so that a value both sides got
wrong in the same way cannot slip through every test.
"""

from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from lxml import etree

HL7_NS: Final = "urn:hl7-org:v3"
NPFIT_NS: Final = "NPFIT:HL7:Localisation"

QUERY_INTERACTION: Final = "QUPC_IN000006GB01"
RESPONSE_INTERACTION: Final = "REPC_IN000007GB01"
QUERY_FAILED_INTERACTION: Final = "QUQI_IN010000UK14"
APP_ACK_INTERACTION: Final = "MCCI_IN010000UK13"

OID_INTERACTION_ID: Final = "2.16.840.1.113883.2.1.3.2.4.12"
OID_ASID: Final = "1.2.826.0.1285.0.2.0.107"
OID_SDS_USER_ID: Final = "1.2.826.0.1285.0.2.0.65"
OID_ODS_ORGANISATION: Final = "2.16.840.1.113883.2.1.3.2.4.19.1"
OID_NHS_NUMBER: Final = "2.16.840.1.113883.2.1.4.1"
OID_TEMPLATE_CONTENT_ID: Final = "2.16.840.1.113883.2.1.3.2.4.18.16"
OID_JOB_ROLE_NHS_DATA: Final = "2.16.840.1.113883.2.1.3.2.4.17.196"
OID_SPINE_ISSUE_CODES: Final = "2.16.840.1.113883.2.1.3.2.4.17.42"

# What Spine's own CP-IS reply generator stamps on a query response (docs/decisions.md#d2).
RESPONSE_VERSION_CODE: Final = "v3INF_DMSv5.7:FIN"
# Infrastructure acknowledgements carry the generic MIM label, as in the NHS test kit (docs/decisions.md#d2).
ACK_VERSION_CODE: Final = "V3NPfIT3.0"

UK_TIME: Final = ZoneInfo("Europe/London")
_NSMAP: Final = {None: HL7_NS, "npfitlc": NPFIT_NS}
_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def hl7_root(tag: str) -> etree._Element:
    """A document element with HL7 as the default namespace and ``npfitlc`` declared once at the top."""
    # A None key declares the default namespace; lxml accepts it, its stubs do not.
    return etree.Element(f"{{{HL7_NS}}}{tag}", nsmap=_NSMAP)  # type: ignore[arg-type]


def sub(parent: etree._Element, tag: str, /, text: str | None = None, **attrs: str) -> etree._Element:
    """Append an HL7 element; values go through lxml, so they are escaped, never formatted into markup."""
    element = etree.SubElement(parent, f"{{{HL7_NS}}}{tag}", attrs)
    if text is not None:
        element.text = text
    return element


def template_slot(parent: etree._Element, template: str) -> etree._Element:
    """The ``npfitlc:contentId`` marker, then the template element (docs/protocol.md#p1, "Template slot")."""
    head, _, tail = template.rpartition(".")
    etree.SubElement(
        parent, f"{{{NPFIT_NS}}}contentId", root=OID_TEMPLATE_CONTENT_ID, extension=f"{head}#{tail}"
    )
    return sub(parent, template)


def serialise(root: etree._Element) -> bytes:
    """UTF-8 bytes behind the conventional double-quoted declaration (lxml's own uses single quotes)."""
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def hl7_timestamp(moment: datetime) -> str:
    """14 digits of UK local time, no offset (docs/decisions.md#d5); a naive datetime is taken as UK time."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UK_TIME)
    return moment.strftime("%Y%m%d%H%M%S")
