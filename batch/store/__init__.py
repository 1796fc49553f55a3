"""The run's state: runs, children, attempts, inbound messages and the audit trail, in one SQLite file."""

from batch.store.records import (
    AttemptRef,
    AwaitedAttempt,
    ChildOutcome,
    ChildProgress,
    FlagResult,
    InboundRecord,
    PlanRow,
    Resolution,
    Run,
    RunCounts,
    StoredInbound,
)
from batch.store.schema import SCHEMA_VERSION
from batch.store.state_file import Store, StoreError, StoreOpenError, utcnow

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRef",
    "AwaitedAttempt",
    "ChildOutcome",
    "ChildProgress",
    "FlagResult",
    "InboundRecord",
    "PlanRow",
    "Resolution",
    "Run",
    "RunCounts",
    "Store",
    "StoreError",
    "StoreOpenError",
    "StoredInbound",
    "utcnow",
]
