"""docs/decisions.md#d12: no code default names an NHS host; only the two identifier constants mention one."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The simulator too: it used to live in batch/, and a default of its could be copied into the product.
PACKAGES = (REPO / "batch", REPO / "spine_sim")
NHS_HOST = re.compile(r"[A-Za-z0-9.-]*\bnhs\.(uk|net)\b[A-Za-z0-9./-]*", re.IGNORECASE)
# Identifiers only, never contacted: the Content-Id domain, the manifest schema location and the namespace
# name of Spine's SOAP fault details.
ALLOWED = {"spine.nhs.uk", "www.nhsia.nhs.uk/schemas/HL7-Message.xsd", "national.carerecords.nhs.uk/schema/"}


def test_package_names_no_nhs_host() -> None:
    found = set()
    for path in (path for package in PACKAGES for path in package.rglob("*.py")):
        for match in NHS_HOST.finditer(path.read_text()):
            text = match.group(0).lstrip("@/.").removeprefix("http://").removeprefix("https://")
            if text not in ALLOWED:
                found.add(f"{path.relative_to(REPO)}: {text}")
    assert not found


def test_the_scan_would_notice_one() -> None:
    assert NHS_HOST.search('URL = "https://msg.int.spine2.ncrs.nhs.uk/reliablemessaging"')
