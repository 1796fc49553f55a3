"""Identifiers for messages, conversations and query acts (docs/decisions.md#d4)."""

import uuid


def new_id() -> str:
    """A random UUID in the uppercase form the CP-IS datatypes require."""
    return str(uuid.uuid4()).upper()
