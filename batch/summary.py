"""The run summary: one typed record, written as `summary.json` and returned to the caller alike."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class ThisProcess:
    """What this process did (a resumed run's earlier processes are not in here)."""

    posts: int
    accepted: int
    rejected: int
    not_sent: int
    reply_timeouts: int
    inbound: dict[str, int] = field(default_factory=dict)
    """Inbound messages by how they were filed (`orphan`, `rejected`, ...) or why they were not stored."""
    inbound_refused: dict[str, int] = field(default_factory=dict)
    """Connections and requests the reply endpoint refused, by reason (`peer_not_allowed`, `too_large`, ...)."""
    post_concurrency_peak: int = 0
    commit_groups: int = 0


@dataclass(frozen=True)
class RunSummary:
    """Counts, ids and times only: never patient data."""

    run_id: str
    job: str
    profile: str
    resumed: bool
    run_started_at: str
    process_started_at: str
    finished_at: str
    reference_date: str
    rows: int
    distinct_children: int
    outcomes: dict[str, int]
    flagged_plan_rows: int
    queries_sent: int
    """Attempts whose POST left us, over the whole run (every process)."""
    send_failures: int
    """Attempts that never reached Spine, over the whole run."""
    replies: dict[str, int]
    """Inbound messages of this run by disposition."""
    this_process: ThisProcess
    circuit_breaker_open: bool
    duration_s: float
    sending_duration_s: float
    achieved_rate_per_s: float | None
    configured_rate_per_s: float
    changes: dict[str, int] | str = "first_run"
    """Rows of `changes.parquet` per change kind (batch/changes.py), or `first_run` when the job had no complete
    run to compare with."""

    @property
    def incomplete(self) -> int:
        """Rows that need a look (`error`, `no_reply`): they make the exit code 1."""
        return self.outcomes.get("error", 0) + self.outcomes.get("no_reply", 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        """The summary `to_json` wrote (keys it does not know are ignored)."""
        data = json.loads(text)
        values = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        process = data["this_process"]
        values["this_process"] = ThisProcess(
            **{k: v for k, v in process.items() if k in {f.name for f in fields(ThisProcess)}}
        )
        return cls(**values)
