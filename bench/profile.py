"""Share a run's measured CPU per child out by component, from py-spy's raw samples of that run.

py-spy (`record --format raw`) writes one line per distinct stack: frames from the thread's root to its leaf,
`;`-separated, then a count. Samples of a thread waiting (epoll, a condition, a queue) are dropped: they are
not CPU. Each remaining sample goes to one component:

1. whole-stack rules first: anything under an import is start-up, anything under the report writers is
   reports (both are fixed costs, spread over the run's children);
2. then the innermost frame, walking outward, that a component claims: TLS record work called from the HTTP
   client counts as TLS, not as HTTP.

A component's share of the samples, times the run's CPU per child from rusage, is its figure. Samples are
wall-clock ticks of running threads, so a thread waiting for the GIL looks busy; the shares are an estimate,
the total is exact.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_IDLE_LEAF = re.compile(
    r"select \((selectors|asyncio)|Condition\.wait \(|Event\.wait \(threading|_worker \(concurrent"
    r"|SimpleQueue|Queue\.get \(|_wait_for_tstate_lock|time\.sleep|WorkerThread\.run \(anyio"
)

_WHOLE_STACK = (
    ("start-up (imports, config, TLS contexts)", re.compile(r"<frozen importlib\._bootstrap")),
    (
        "reports (polars, CSV, Parquet, xlsx, HTML)",
        re.compile(r"stage_reports|_finalise|batch/reports\.py|_report \("),
    ),
)

_INNERMOST = (
    ("TLS handshakes", re.compile(r"do_handshake")),
    ("TLS record I/O", re.compile(r"sslproto\.py|/ssl\.py")),
    ("SQLite (writer thread and reads)", re.compile(r"sqlite3|aiosqlite|batch/store/")),
    (
        "outbound HTTP (h11, httpx models)",
        re.compile(r"h11/|httpx/|httpcore/|batch/spine_http\.py|batch/transport\.py"),
    ),
    ("inbound HTTP server (uvicorn, httptools)", re.compile(r"uvicorn/|httptools|batch/inbound/")),
    ("MIME and ebXML parse/build", re.compile(r"batch/mime\.py|batch/ebxml\.py")),
    ("HL7 reply parse and query build", re.compile(r"batch/hl7/|batch/outbound\.py|batch/xmlsafe\.py")),
    ("correlation and outcomes", re.compile(r"batch/correlate\.py|batch/outcomes\.py|batch/attempts\.py")),
    (
        "pipeline, limiter, concurrency",
        re.compile(r"batch/pipeline\.py|batch/ratelimit\.py|batch/concurrency\.py|stamina/"),
    ),
    ("progress and logging", re.compile(r"batch/progress\.py|logging/")),
    ("asyncio/anyio scheduling", re.compile(r"asyncio/|anyio/|concurrent/futures|threading\.py")),
)

OTHER = "other"


def classify(frames: list[str]) -> str | None:
    """The component a sample's stack belongs to, or None for a waiting thread."""
    if not frames or _IDLE_LEAF.search(frames[-1]):
        return None
    for name, rule in _WHOLE_STACK:
        if any(rule.search(frame) for frame in frames):
            return name
    for frame in reversed(frames):
        for name, rule in _INNERMOST:
            if rule.search(frame):
                return name
    return OTHER


def breakdown(samples: Path, cpu_ms_per_child: float) -> dict[str, float]:
    """Milliseconds of CPU per child by component, largest first; they add up to `cpu_ms_per_child`."""
    counts: Counter[str] = Counter()
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        component = classify(stack.split(";"))
        if component is not None:
            counts[component] += int(count)
    total = sum(counts.values())
    if total == 0:
        return {}
    return {name: round(cpu_ms_per_child * n / total, 3) for name, n in counts.most_common()}
