"""The job file: one TOML per job, validated once at startup.

Decisions it applies: docs/decisions.md#d3, docs/decisions.md#d7, docs/decisions.md#d8, docs/decisions.md#d12.

Every table and key a job file may hold is declared once, below, with the parser that checks its value and its
default. The loader refuses anything not declared (a misspelt key must not quietly fall back to its default),
so the declarations are the whole job file format.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from cryptography import x509

from batch.hl7 import DEFAULT_NOT_FOUND_CODES, DEFAULT_ROLE_CODE_SYSTEM, DEFAULT_VERSION_CODE, Sender
from batch.patients import InputSpec

log = logging.getLogger(__name__)

Profile = Literal["simulated", "test", "live"]
PROFILES: tuple[Profile, ...] = ("simulated", "test", "live")

# Spine publishes no throughput figure; above these the operator should know what they are doing
# (docs/decisions.md#d7, docs/decisions.md#d8).
RECOMMENDED_LIMITS = {"rate_per_second": 5.0, "max_in_flight": 100, "max_concurrent_posts": 20}

_ASID = re.compile(r"[0-9]{12}", re.ASCII)
_JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
# HL7StandardVersionCode values the CP-IS InfVocab schema lists for requests.
_VERSION_CODES = frozenset({"V3NPfIT3.0", "V3NPfIT4.2.00", "v3INF_DMSv5.7:FIN", "v3CPI_DMSv1.0:RC3"})


class ConfigError(Exception):
    """A job file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class SpineConfig:
    url: str
    asid: str
    party_key: str
    cpa_id: str


@dataclass(frozen=True)
class InboundConfig:
    host: str
    port: int
    path: str
    public_url: str | None = None
    # "sha256:<64 lowercase hex>" SPKI pins or RFC 4514 subjects as written; None only in the simulated profile.
    allowed_peers: tuple[str, ...] | None = None

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class TlsPaths:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Limits:
    rate_per_second: float = 5.0
    max_in_flight: int = 100
    reply_timeout_s: float = 60.0
    max_attempts: int = 3
    # A hard cap; the POSTs actually open at once follow the rate and Spine's measured acknowledgement time.
    max_concurrent_posts: int = 20
    circuit_breaker_failures: int = 5


@dataclass(frozen=True)
class HttpConfig:
    connect_timeout_s: float = 10.0
    response_timeout_s: float = 30.0
    transport_retries: int = 2
    backoff_s: float = 1.0


@dataclass(frozen=True)
class Retention:
    # Days the raw Spine messages of a run are kept.
    raw_days: int = 30


@dataclass(frozen=True)
class JobConfig:
    path: Path
    name: str
    input_pattern: str
    output_dir: Path
    state: Path
    profile: Profile
    input: InputSpec
    spine: SpineConfig
    sender: Sender
    sender_party_key: str
    inbound: InboundConfig
    tls: TlsPaths
    limits: Limits = field(default_factory=Limits)
    http: HttpConfig = field(default_factory=HttpConfig)
    version_code: str = DEFAULT_VERSION_CODE
    not_found_codes: frozenset[str] = DEFAULT_NOT_FOUND_CODES
    # A Unix group (known to this machine) that may read the outputs.
    group: str | None = None
    retention: Retention = field(default_factory=Retention)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.state.with_name(self.state.name + ".lock")


# --- value parsers: each takes a TOML value and returns it typed, or raises _Invalid -----------------------


class _Invalid(Exception):
    """A value unfit for its key; the message completes "<table>.<key> ..."."""


def _found(value: object) -> str:
    """What a TOML value is, in the words a job file's author would use."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _wrong_type(expected: str, value: object) -> _Invalid:
    return _Invalid(f"must be {expected} (found {_found(value)})")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _wrong_type("a non-empty string", value)
    if not value.strip():
        raise _Invalid("must be a non-empty string")
    return value.strip()


def _matching(pattern: re.Pattern[str], reason: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value)
        if not pattern.fullmatch(text):
            raise _Invalid(reason)
        return text

    return parse


def _profile(value: object) -> Profile:
    text = _text(value)
    if text not in PROFILES:
        raise _Invalid(f"must be one of {', '.join(PROFILES)}")
    return text


def _group(value: object) -> str:
    name = _text(value)
    try:
        grp.getgrnam(name)
    except KeyError:
        raise _Invalid(f"names no Unix group on this machine ('{name}')") from None
    return name


def _https_url(value: object) -> str:
    url = _text(value)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise _Invalid("must be an https:// URL")
    return url


def _url_path(value: object) -> str:
    path = _text(value)
    if not path.startswith("/"):
        raise _Invalid("must start with '/'")
    return path


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type("a port number (1-65535)", value)
    if not 0 < value < 65536:
        raise _Invalid("must be a port number (1-65535)")
    return value


def _whole(*, allow_zero: bool) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type("a whole number", value)
        if value < 0 or (value == 0 and not allow_zero):
            raise _Invalid(f"must be {'zero or more' if allow_zero else 'positive'}")
        return value

    return parse


def _positive(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type("a number", value)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    # TOML has inf and nan; neither is a rate or a timeout.
    if not math.isfinite(number):
        raise _Invalid("must be a finite number")
    if number <= 0:
        raise _Invalid("must be positive")
    return number


def _one_character(value: object) -> str:
    if not isinstance(value, str):
        raise _wrong_type("one character", value)
    if len(value) != 1:
        raise _Invalid("must be one character")
    return value


def _version_code(value: object) -> str:
    code = _text(value)
    if code not in _VERSION_CODES:
        raise _Invalid("is not an HL7StandardVersionCode value")
    return code


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        raise _wrong_type("a list of strings", value)
    strings = [item for item in value if isinstance(item, str) and item]
    if len(strings) != len(value):
        raise _Invalid("must be a list of strings (each non-empty)")
    return strings


def _code_set(value: object) -> frozenset[str]:
    return frozenset(_strings(value))


def _peer(position: int, entry: str) -> str:
    if entry[:7].lower() == "sha256:":
        digest = entry[7:]
        if not _SHA256_HEX.fullmatch(digest):
            raise _Invalid(f"entry {position} must be 'sha256:' and 64 hex digits")
        return "sha256:" + digest.lower()
    try:
        subject = x509.Name.from_rfc4514_string(entry)
    except ValueError:
        subject = None
    if subject is None or len(subject) == 0:
        raise _Invalid(
            f"entry {position} ('{entry}') is neither 'sha256:' and 64 hex digits nor a certificate "
            "subject in RFC 4514 form such as 'CN=msg.spine.example,O=NHS'"
        )
    return entry


def _allowed_peers(value: object) -> tuple[str, ...]:
    entries = _strings(value)
    if not entries:
        raise _Invalid("is empty, which would refuse every reply")
    return tuple(_peer(position, entry) for position, entry in enumerate(entries, start=1))


# --- the schema -------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Required:
    """The default of a key that must be given."""


_REQUIRED = _Required()


@dataclass(frozen=True)
class _Key(Generic[T]):
    table: str
    name: str
    parse: Callable[[object], T]
    default: T | _Required

    @property
    def dotted(self) -> str:
        return f"{self.table}.{self.name}"


class _Table:
    def __init__(self, name: str, *, required: bool) -> None:
        self.name = name
        self.required = required
        self.keys: dict[str, _Key[Any]] = {}
        _SCHEMA[name] = self

    def key(self, name: str, parse: Callable[[object], T], default: T | _Required = _REQUIRED) -> _Key[T]:
        declared = _Key(self.name, name, parse, default)
        self.keys[name] = declared
        return declared


_SCHEMA: dict[str, _Table] = {}

_job = _Table("job", required=True)
JOB_NAME = _job.key("name", _matching(_JOB_NAME_PATTERN, "may hold letters, digits, '.', '_' and '-' only"))
JOB_INPUT = _job.key("input", _text)
JOB_OUTPUT_DIR = _job.key("output_dir", _text)
JOB_STATE = _job.key("state", _text)
JOB_PROFILE: _Key[Profile] = _job.key("profile", _profile, "simulated")
JOB_GROUP: _Key[str | None] = _job.key("group", _group, None)

_input = _Table("input", required=True)
INPUT_NHS_NUMBER_COLUMN = _input.key("nhs_number_column", _text)
INPUT_APPOINTMENT_DATE_COLUMN: _Key[str | None] = _input.key("appointment_date_column", _text, None)
INPUT_APPOINTMENT_DATE_FORMAT: _Key[str | None] = _input.key("appointment_date_format", _text, None)
INPUT_DELIMITER = _input.key("delimiter", _one_character, ",")
INPUT_ENCODING = _input.key("encoding", _text, "utf-8")
INPUT_CLINIC_COLUMN: _Key[str | None] = _input.key("clinic_column", _text, None)
INPUT_NAME_COLUMN: _Key[str | None] = _input.key("name_column", _text, None)
INPUT_DATE_OF_BIRTH_COLUMN: _Key[str | None] = _input.key("date_of_birth_column", _text, None)
INPUT_WINDOW_DAYS: _Key[int | None] = _input.key("window_days", _whole(allow_zero=True), None)

_spine = _Table("spine", required=True)
SPINE_URL = _spine.key("url", _https_url)
SPINE_ASID = _spine.key("asid", _matching(_ASID, "must be 12 digits"))
SPINE_PARTY_KEY = _spine.key("party_key", _text)
SPINE_CPA_ID = _spine.key("cpa_id", _text)

_sender = _Table("sender", required=True)
SENDER_ASID = _sender.key("asid", _matching(_ASID, "must be 12 digits"))
SENDER_PARTY_KEY = _sender.key("party_key", _text)
SENDER_ODS_CODE = _sender.key("ods_code", _text)
SENDER_ORGANISATION_NAME = _sender.key("organisation_name", _text)
SENDER_PERSON_NAME = _sender.key("responsible_person_name", _text)
SENDER_ROLE_CODE = _sender.key("responsible_person_role_code", _text)
SENDER_ROLE_NAME = _sender.key("responsible_person_role_name", _text)
SENDER_ROLE_CODE_SYSTEM = _sender.key("responsible_person_role_code_system", _text, DEFAULT_ROLE_CODE_SYSTEM)

_inbound = _Table("inbound", required=True)
INBOUND_HOST = _inbound.key("host", _text)
INBOUND_PORT = _inbound.key("port", _port)
INBOUND_PATH = _inbound.key("path", _url_path)
INBOUND_PUBLIC_URL: _Key[str | None] = _inbound.key("public_url", _text, None)
INBOUND_ALLOWED_PEERS: _Key[tuple[str, ...] | None] = _inbound.key("allowed_peers", _allowed_peers, None)

_tls = _Table("tls", required=True)
TLS_CERT = _tls.key("cert", _text)
TLS_KEY = _tls.key("key", _text)
TLS_CA = _tls.key("ca", _text)

_limits = _Table("limits", required=False)
LIMITS_RATE_PER_SECOND = _limits.key("rate_per_second", _positive, Limits.rate_per_second)
LIMITS_MAX_IN_FLIGHT = _limits.key("max_in_flight", _whole(allow_zero=False), Limits.max_in_flight)
LIMITS_REPLY_TIMEOUT_S = _limits.key("reply_timeout_s", _positive, Limits.reply_timeout_s)
LIMITS_MAX_ATTEMPTS = _limits.key("max_attempts", _whole(allow_zero=False), Limits.max_attempts)
LIMITS_MAX_CONCURRENT_POSTS = _limits.key(
    "max_concurrent_posts", _whole(allow_zero=False), Limits.max_concurrent_posts
)
LIMITS_CIRCUIT_BREAKER_FAILURES = _limits.key(
    "circuit_breaker_failures", _whole(allow_zero=False), Limits.circuit_breaker_failures
)

_http = _Table("http", required=False)
HTTP_CONNECT_TIMEOUT_S = _http.key("connect_timeout_s", _positive, HttpConfig.connect_timeout_s)
HTTP_RESPONSE_TIMEOUT_S = _http.key("response_timeout_s", _positive, HttpConfig.response_timeout_s)
HTTP_TRANSPORT_RETRIES = _http.key("transport_retries", _whole(allow_zero=True), HttpConfig.transport_retries)
HTTP_BACKOFF_S = _http.key("backoff_s", _positive, HttpConfig.backoff_s)

_hl7 = _Table("hl7", required=False)
HL7_VERSION_CODE = _hl7.key("version_code", _version_code, DEFAULT_VERSION_CODE)
HL7_NOT_FOUND_CODES = _hl7.key("not_found_codes", _code_set, DEFAULT_NOT_FOUND_CODES)

_retention = _Table("retention", required=False)
RETENTION_RAW_DAYS = _retention.key("raw_days", _whole(allow_zero=False), Retention.raw_days)


def known_keys() -> dict[str, tuple[str, ...]]:
    """Every table a job file may hold and the keys of each, in declaration order."""
    return {name: tuple(table.keys) for name, table in _SCHEMA.items()}


# --- reading ----------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one checked TOML document, with errors that name the file and the key."""

    def __init__(self, path: Path, data: Mapping[str, Any]) -> None:
        self.path = path
        self.data = data

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {message}")

    def check_shape(self) -> None:
        """Refuse unknown tables and keys (naming the nearest known one), then missing tables."""
        for name, value in self.data.items():
            table = _SCHEMA.get(name)
            if table is None:
                raise self.error(_unknown_top_level(name, value))
            if not isinstance(value, dict):
                raise self.error(f"[{name}] must be a table")
            for key in value:
                if key not in table.keys:
                    raise self.error(_unknown_key(name, key))
        for name, table in _SCHEMA.items():
            if table.required and name not in self.data:
                raise self.error(f"missing table [{name}]")

    def get(self, key: _Key[T]) -> T:
        values = self.data.get(key.table, {})
        if key.name not in values:
            if isinstance(key.default, _Required):
                raise self.error(f"{key.dotted} is required")
            return key.default
        try:
            return key.parse(values[key.name])
        except _Invalid as exc:
            raise self.error(f"{key.dotted} {exc}") from None

    def path_of(self, key: _Key[str]) -> Path:
        path = Path(self.get(key)).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()


def _unknown_top_level(name: str, value: object) -> str:
    if isinstance(value, dict):
        close = difflib.get_close_matches(name, list(_SCHEMA), n=1)
        hint = f"; did you mean [{close[0]}]?" if close else f" (known tables: {', '.join(_SCHEMA)})"
        return f"unknown table [{name}]{hint}"
    homes = [table for table, spec in _SCHEMA.items() if name in spec.keys]
    hint = f"; did you mean `{homes[0]}.{name}`?" if homes else ""
    return f"unknown key `{name}` outside any table{hint}"


def _unknown_key(table: str, key: str) -> str:
    own = _SCHEMA[table].keys
    close = difflib.get_close_matches(key, list(own), n=1)
    if close:
        return f"unknown key `{table}.{key}`; did you mean `{table}.{close[0]}`?"
    # A right key in the wrong table, e.g. `[job] nhs_number_column`.
    elsewhere = {name: other for other, spec in _SCHEMA.items() if other != table for name in spec.keys}
    moved = difflib.get_close_matches(key, list(elsewhere), n=1, cutoff=0.8)
    if moved:
        return f"unknown key `{table}.{key}`; did you mean `{elsewhere[moved[0]]}.{moved[0]}`?"
    return f"unknown key `{table}.{key}` (known keys in [{table}]: {', '.join(own)})"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a job file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc.strerror})") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: job file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_job(path: Path) -> JobConfig:
    """Read and validate a job file; every problem is a ConfigError (exit 2)."""
    path = path.resolve() if path.exists() else path
    r = _Reader(path, _parse_toml(path))
    r.check_shape()

    profile = r.get(JOB_PROFILE)
    spine = SpineConfig(
        url=r.get(SPINE_URL),
        asid=r.get(SPINE_ASID),
        party_key=r.get(SPINE_PARTY_KEY),
        cpa_id=r.get(SPINE_CPA_ID),
    )
    sender = Sender(
        asid=r.get(SENDER_ASID),
        ods_code=r.get(SENDER_ODS_CODE),
        organisation_name=r.get(SENDER_ORGANISATION_NAME),
        responsible_person_name=r.get(SENDER_PERSON_NAME),
        role_code=r.get(SENDER_ROLE_CODE),
        role_name=r.get(SENDER_ROLE_NAME),
        role_code_system=r.get(SENDER_ROLE_CODE_SYSTEM),
    )
    inbound = InboundConfig(
        host=r.get(INBOUND_HOST),
        port=r.get(INBOUND_PORT),
        path=r.get(INBOUND_PATH),
        public_url=r.get(INBOUND_PUBLIC_URL),
        allowed_peers=r.get(INBOUND_ALLOWED_PEERS),
    )
    if profile == "simulated":
        # The simulated profile must never reach a real endpoint (docs/decisions.md#d12).
        spine_host = urlsplit(spine.url).hostname or ""
        for key, host in (("spine.url", spine_host), ("inbound.host", inbound.host)):
            if not _is_loopback(host):
                raise r.error(f"{key} must be a loopback address in the simulated profile")
    elif inbound.allowed_peers is None:
        # Outside the simulator the CA signs certificates for every connected system, not only Spine.
        raise r.error(
            f"inbound.allowed_peers is required for profile '{profile}': the peers that may post replies, "
            "each 'sha256:<SPKI hash>' or a certificate subject"
        )

    tls = TlsPaths(cert=r.path_of(TLS_CERT), key=r.path_of(TLS_KEY), ca=r.path_of(TLS_CA))
    limits = Limits(
        rate_per_second=r.get(LIMITS_RATE_PER_SECOND),
        max_in_flight=r.get(LIMITS_MAX_IN_FLIGHT),
        reply_timeout_s=r.get(LIMITS_REPLY_TIMEOUT_S),
        max_attempts=r.get(LIMITS_MAX_ATTEMPTS),
        max_concurrent_posts=r.get(LIMITS_MAX_CONCURRENT_POSTS),
        circuit_breaker_failures=r.get(LIMITS_CIRCUIT_BREAKER_FAILURES),
    )
    for key, recommended in RECOMMENDED_LIMITS.items():
        if getattr(limits, key) > recommended:
            log.warning(
                "limits.%s is above the recommended %s; agree it with NHS England first", key, recommended
            )
    http = HttpConfig(
        connect_timeout_s=r.get(HTTP_CONNECT_TIMEOUT_S),
        response_timeout_s=r.get(HTTP_RESPONSE_TIMEOUT_S),
        transport_retries=r.get(HTTP_TRANSPORT_RETRIES),
        backoff_s=r.get(HTTP_BACKOFF_S),
    )
    try:
        input_spec = InputSpec(
            nhs_number_column=r.get(INPUT_NHS_NUMBER_COLUMN),
            appointment_date_column=r.get(INPUT_APPOINTMENT_DATE_COLUMN),
            appointment_date_format=r.get(INPUT_APPOINTMENT_DATE_FORMAT),
            delimiter=r.get(INPUT_DELIMITER),
            encoding=r.get(INPUT_ENCODING),
            clinic_column=r.get(INPUT_CLINIC_COLUMN),
            name_column=r.get(INPUT_NAME_COLUMN),
            date_of_birth_column=r.get(INPUT_DATE_OF_BIRTH_COLUMN),
            window_days=r.get(INPUT_WINDOW_DAYS),
        )
    except ValueError as exc:
        raise r.error(f"[input] {exc}") from None
    return JobConfig(
        path=path,
        name=r.get(JOB_NAME),
        input_pattern=r.get(JOB_INPUT),
        output_dir=r.path_of(JOB_OUTPUT_DIR),
        state=r.path_of(JOB_STATE),
        profile=profile,
        input=input_spec,
        spine=spine,
        sender=sender,
        sender_party_key=r.get(SENDER_PARTY_KEY),
        inbound=inbound,
        tls=tls,
        limits=limits,
        http=http,
        version_code=r.get(HL7_VERSION_CODE),
        not_found_codes=r.get(HL7_NOT_FOUND_CODES),
        group=r.get(JOB_GROUP),
        retention=Retention(raw_days=r.get(RETENTION_RAW_DAYS)),
    )
