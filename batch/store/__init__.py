"""The run's state: runs, children, attempts, inbound messages and the audit trail, in one SQLite file."""

from batch.store.records import (
    AttemptRef,
    AuditEntry,
    AwaitedAttempt,
    ChildOutcome,
    ChildProgress,
    FlagResult,
    InboundRecord,
    PlanRow,
    QueryReason,
    Resolution,
    Run,
    RunCounts,
    SenderIdentity,
    StoredInbound,
    StoredInputs,
    StoredRun,
)
from batch.store.schema import SCHEMA_VERSION
from batch.store.state_file import Store, StoreError, StoreOpenError, utcnow

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRef",
    "AuditEntry",
    "AwaitedAttempt",
    "ChildOutcome",
    "ChildProgress",
    "FlagResult",
    "InboundRecord",
    "PlanRow",
    "QueryReason",
    "Resolution",
    "Run",
    "RunCounts",
    "SenderIdentity",
    "Store",
    "StoreError",
    "StoreOpenError",
    "StoredInbound",
    "StoredInputs",
    "StoredRun",
    "utcnow",
]
