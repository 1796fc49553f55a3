"""Person names as the HL7 `PN` parts the device author needs (docs/decisions.md#d3)."""

from dataclasses import dataclass

# Titles recognised as a `prefix`; anything else is read as a given name.
KNOWN_PREFIXES = frozenset({"dr", "mr", "mrs", "ms", "miss", "mx", "prof"})


@dataclass(frozen=True)
class PersonName:
    prefix: str | None
    given: tuple[str, ...]
    family: str


def split_person_name(full_name: str) -> PersonName:
    """Split "Dr Jane Q Smith": optional known title, given names, then the last word as family name.

    Raises ValueError (without echoing the name) unless a given and a family name remain.
    """
    tokens = full_name.split()
    prefix = None
    if tokens and tokens[0].rstrip(".").casefold() in KNOWN_PREFIXES:
        prefix, tokens = tokens[0], tokens[1:]
    if len(tokens) < 2:
        raise ValueError("a person name needs at least one given name and a family name")
    return PersonName(prefix=prefix, given=tuple(tokens[:-1]), family=tokens[-1])
