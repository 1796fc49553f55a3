"""The state file's schema, its version and the numbered migrations that bring an older file up to date.

Version 1 is the first released layout. Each migration is a function from version N to N + 1 run inside the
transaction that also records the new version, so a file is never left half-migrated. A file written by a newer
cpis-batch is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from batch.states import (
    AttemptStatus,
    Disposition,
    RunStatus,
    check_constraint,
)

SCHEMA_VERSION = 4

# Stored inbound rows; a duplicate is answered but never stored a second time.
STORED_DISPOSITIONS = tuple(d for d in Disposition if d is not Disposition.DUPLICATE)

# The columns a table has kept since version 1, in order; each version's layout adds the ones it changed. Every
# migration builds from these, so they are never edited: a later version's change is a column of its own.
_RUN_COLUMNS = (
    "run_id TEXT PRIMARY KEY",
    "job_name TEXT NOT NULL",
    "input_fingerprint TEXT NOT NULL",
    "reference_date TEXT NOT NULL",
    "started_at TEXT NOT NULL",
    "finished_at TEXT",
)
_ATTEMPT_COLUMNS = (
    "message_id TEXT PRIMARY KEY",
    "conversation_id TEXT NOT NULL",
    "query_event_id TEXT NOT NULL",
    "run_id TEXT NOT NULL",
    "nhs_number TEXT NOT NULL",
    "attempt INTEGER NOT NULL",
)
_INBOUND_HEADER_COLUMNS = (
    "message_id TEXT PRIMARY KEY",
    "received_at TEXT NOT NULL",
    "action TEXT",
    "ref_to_message_id TEXT",
    "conversation_id TEXT",
    "from_party TEXT",
    "attempt_message_id TEXT",
    "run_id TEXT",
)


def _inbound_columns(disposition: str) -> tuple[str, ...]:
    """`inbound` as versions 1 to 3 have it (version 3 adds `raw_size`), with that version's `disposition`."""
    return (*_INBOUND_HEADER_COLUMNS, disposition, "detail TEXT", "raw BLOB NOT NULL", "ack BLOB NOT NULL")


_STORED_DISPOSITION = f"disposition TEXT NOT NULL {check_constraint('disposition', STORED_DISPOSITIONS)}"


def _create_table(name: str, columns: Sequence[str], indent: int = 4) -> str:
    """`CREATE TABLE` a column a line. SQLite keeps the statement's text as the table's schema, so the layout
    is the one each version has always written: columns at four spaces in version 1, at twelve in rebuilds."""
    pad = " " * indent
    body = f",\n{pad}".join(columns)
    return f"CREATE TABLE {name} (\n{pad}{body}\n{pad[4:]})"


def _script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript: it commits any open transaction first, and a migration must be all or nothing.
    # (So no semicolon may appear inside a statement, comments included.)
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    """The first released layout, as it was (a new file is built by running every migration)."""
    runs = (*_RUN_COLUMNS, "status TEXT NOT NULL CHECK (status IN ('running', 'complete'))")
    attempts = (
        *_ATTEMPT_COLUMNS,
        "created_at TEXT NOT NULL",
        "sent_at TEXT",
        "status TEXT NOT NULL CHECK (status IN ('created', 'accepted', 'failed', 'unanswered', 'answered', 'timed_out'))",
        "detail TEXT",
    )
    _script(
        conn,
        f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{_create_table("runs", runs)};
CREATE INDEX runs_job ON runs (job_name, input_fingerprint, status);
-- One row per distinct child per run: the unit that gets exactly one outcome.
CREATE TABLE queries (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    nhs_number TEXT NOT NULL,
    outcome TEXT CHECK (outcome IN ('flagged', 'not_flagged', 'error', 'no_reply')),
    reason TEXT,
    result_json TEXT,
    resolved_by TEXT,
    resolved_at TEXT,
    PRIMARY KEY (run_id, nhs_number)
);
-- One row per attempt (new M, C, Q), written before the POST.
{_create_table("attempts", attempts)};
CREATE INDEX attempts_query ON attempts (run_id, nhs_number);
CREATE UNIQUE INDEX attempts_conversation ON attempts (conversation_id);
CREATE UNIQUE INDEX attempts_query_event ON attempts (query_event_id);
-- Every inbound message, stored before it is acknowledged. message_id is the duplicate-elimination key.
{_create_table("inbound", _inbound_columns("disposition TEXT NOT NULL"))};
CREATE INDEX inbound_run ON inbound (run_id);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    run_id TEXT,
    event TEXT NOT NULL,
    message_id TEXT,
    detail TEXT
);
""",
    )


def _rebuild(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], select: str, indexes: tuple[str, ...]
) -> None:
    """Replace a table by one with `columns` (built as `{table}_new`), filled by `select` from the old one.

    SQLite's own recipe: build the new table beside the old, drop the old, rename the new (with foreign keys
    off, see `prepare`), so that other tables' references to this one keep pointing at it.
    """
    conn.execute(_create_table(f"{table}_new", columns, indent=12))
    conn.execute(f"INSERT INTO {table}_new {select}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
    for index in indexes:
        conn.execute(index)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """States checked against the code's enums; attempts recorded after their rate slot.

    Version 1 recorded an attempt before its rate slot (`created`), and `failed` mixed two meanings.
    `created` rows may have been posted, so they become `sending` (waited for, counted). A `failed` row that
    carries a permanent refusal's code becomes `rejected`; other failures never reached Spine (`not_sent`).
    Version 1 stamped the 202 in `sent_at` and the recording in `created_at`. Runs may now be `failed`.
    """
    for index in (
        "runs_job",
        "attempts_query",
        "attempts_conversation",
        "attempts_query_event",
        "inbound_run",
    ):
        conn.execute(f"DROP INDEX {index}")
    _rebuild(
        conn,
        "runs",
        (*_RUN_COLUMNS, f"status TEXT NOT NULL {check_constraint('status', RunStatus)}"),
        "SELECT * FROM runs",
        ("CREATE INDEX runs_job ON runs (job_name, input_fingerprint, status)",),
    )
    # sent_at: when the attempt was recorded, just before its POST; acked_at: Spine's 202.
    _rebuild(
        conn,
        "attempts",
        (
            *_ATTEMPT_COLUMNS,
            "sent_at TEXT NOT NULL",
            "acked_at TEXT",
            f"status TEXT NOT NULL {check_constraint('status', AttemptStatus)}",
            "detail TEXT",
        ),
        """
        SELECT message_id, conversation_id, query_event_id, run_id, nhs_number, attempt, created_at, sent_at,
               CASE status
                   WHEN 'created' THEN 'sending'
                   WHEN 'failed' THEN CASE
                       WHEN detail LIKE 'SOAPFault:%' OR detail LIKE 'MessageError:%' OR detail LIKE 'http_4%'
                            OR detail = 'unrecognised_response' THEN 'rejected'
                       ELSE 'not_sent' END
                   ELSE status END,
               detail
        FROM attempts""",
        (
            "CREATE INDEX attempts_query ON attempts (run_id, nhs_number)",
            "CREATE UNIQUE INDEX attempts_conversation ON attempts (conversation_id)",
            "CREATE UNIQUE INDEX attempts_query_event ON attempts (query_event_id)",
        ),
    )
    _rebuild(
        conn,
        "inbound",
        _inbound_columns(_STORED_DISPOSITION),
        "SELECT * FROM inbound",
        ("CREATE INDEX inbound_run ON inbound (run_id)",),
    )


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    """Inbound messages may be `rejected`, and record the size they arrived with.

    A rejected message (an ebXML header from a party or CPA other than Spine's, or not for us) is stored,
    keyed by the MessageError we answered it with. Orphans and rejected messages are stored truncated, so
    `raw_size` keeps the size as received (earlier rows were stored whole: their size is that of `raw`).
    """
    conn.execute("DROP INDEX inbound_run")
    _rebuild(
        conn,
        "inbound",
        (*_inbound_columns(_STORED_DISPOSITION), "raw_size INTEGER NOT NULL"),
        """
        SELECT message_id, received_at, action, ref_to_message_id, conversation_id, from_party,
               attempt_message_id, run_id, disposition, detail, raw, ack, length(raw)
        FROM inbound""",
        ("CREATE INDEX inbound_run ON inbound (run_id)",),
    )


# What a `query_sent` audit row says beyond the time, run, event and message id (version 4).
AUDIT_QUERY_COLUMNS = (
    "nhs_number TEXT",
    "sender_asid TEXT",
    "sender_ods_code TEXT",
    "responsible_person_name TEXT",
    "responsible_person_role_code TEXT",
    "responsible_person_role_name TEXT",
    "source_file TEXT",
    "source_row INTEGER",
    "clinic TEXT",
    "appointment_date TEXT",
    "input_rows INTEGER",
)
APPEND_ONLY = "audit rows are append-only"


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    """The audit trail says who queried which child, when and why, and can no longer be changed; a run keeps
    its input rows and its summary, so its reports can be written again.

    A `query_sent` audit row copies, in the attempt's own transaction, the sender (our ASID and ODS code and
    the responsible person, from the run) and the reason (the first input row with an appointment in the
    window, from the child's `queries` row), so it needs nothing else to be read. Earlier `query_sent` rows
    get the NHS number of their attempt; the rest of what they did not record stays empty. Triggers then
    refuse every UPDATE and DELETE of an audit row, and an INSERT OR REPLACE over one (a later migration that
    rebuilds the table must recreate them). `run_inputs` holds the run's annotated input rows as Parquet, in parts of bounded size.
    """
    for column in AUDIT_QUERY_COLUMNS:
        conn.execute(f"ALTER TABLE audit ADD COLUMN {column}")
    conn.execute(
        "UPDATE audit SET nhs_number = (SELECT a.nhs_number FROM attempts a WHERE a.message_id = audit.message_id)"
        " WHERE event = 'query_sent'"
    )
    conn.execute("CREATE INDEX audit_at ON audit (at)")
    conn.execute("CREATE INDEX audit_nhs_number ON audit (nhs_number) WHERE nhs_number IS NOT NULL")
    # Executed one by one: a trigger's body holds semicolons, which `_script` would split on. REPLACE deletes
    # the row it replaces without firing DELETE triggers, so an insert over an existing id is refused too.
    for name, when in (
        ("audit_no_update", "BEFORE UPDATE ON audit"),
        ("audit_no_delete", "BEFORE DELETE ON audit"),
        ("audit_no_replace", "BEFORE INSERT ON audit WHEN EXISTS (SELECT 1 FROM audit WHERE id = NEW.id)"),
    ):
        conn.execute(f"CREATE TRIGGER {name} {when} BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")
    for column in (
        "sender_asid TEXT",
        "sender_ods_code TEXT",
        "responsible_person_name TEXT",
        "responsible_person_role_code TEXT",
        "responsible_person_role_name TEXT",
        "summary_json TEXT",
    ):
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    for column in (
        "source_file TEXT",
        "source_row INTEGER",
        "clinic TEXT",
        "appointment_date TEXT",
        "input_rows INTEGER",
    ):
        conn.execute(f"ALTER TABLE queries ADD COLUMN {column}")
    # frame: NULL once retention has dropped it (the rows name children, with names and dates of birth).
    _script(
        conn,
        """
CREATE TABLE run_inputs (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    part INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    written_at TEXT NOT NULL,
    frame BLOB,
    PRIMARY KEY (run_id, part)
)
""",
    )


# MIGRATIONS[n] takes a version-n file to version n + 1; a new file is version 0.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _v0_to_v1,
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


class SchemaError(Exception):
    """The file is a database, but not one this version of cpis-batch can use."""


def _user_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(row[0]) for row in rows}


def file_version(conn: sqlite3.Connection) -> int | None:
    """The schema version the file records; None for a new, empty database."""
    tables = _user_tables(conn)
    if not tables:
        return None
    if "meta" not in tables:
        raise SchemaError("it holds tables but no cpis-batch schema version")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise SchemaError("it holds no readable cpis-batch schema version")
    return int(row[0])


def prepare(conn: sqlite3.Connection) -> int:
    """Create or migrate the schema in one transaction; returns the version the file had (0 when new).

    Raises SchemaError for a file from a newer version of cpis-batch or with no schema version. Call it with
    foreign keys off: tables are rebuilt under other tables' references (checked before the commit).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = file_version(conn) or 0
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"it was written by a newer cpis-batch (schema {found}; this version reads up to {SCHEMA_VERSION})"
            )
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
            raise SchemaError("a migration left rows pointing at rows that do not exist")
        conn.execute("COMMIT")
        return found
    except BaseException:
        conn.execute("ROLLBACK")
        raise
