"""The job file: one TOML per job, validated once at startup (decisions c, e, g)."""

from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from batch.hl7 import DEFAULT_NOT_FOUND_CODES, DEFAULT_ROLE_CODE_SYSTEM, DEFAULT_VERSION_CODE, Sender
from batch.patients import InputSpec

log = logging.getLogger(__name__)

Profile = Literal["simulated", "test", "live"]
PROFILES: tuple[Profile, ...] = ("simulated", "test", "live")

# Spine publishes no throughput figure; above these the operator should know what they are doing (decision e).
RECOMMENDED_LIMITS = {"rate_per_second": 5.0, "max_in_flight": 100, "max_concurrent_posts": 20}

_ASID = re.compile(r"[0-9]{12}", re.ASCII)
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

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.state.with_name(self.state.name + ".lock")


class _Reader:
    """Typed access to one TOML document with errors that name file and key."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def table(self, name: str, *, required: bool = True) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            if required:
                raise ConfigError(f"{self.path}: missing table [{name}]")
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        return value

    def text(self, table: str, key: str, *, default: str | None = None, required: bool = True) -> str:
        value = self.table(table, required=required).get(key, default)
        if value is None:
            raise ConfigError(f"{self.path}: {table}.{key} is required")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.path}: {table}.{key} must be a non-empty string")
        return value.strip()

    def optional_text(self, table: str, key: str) -> str | None:
        value = self.table(table, required=False).get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.path}: {table}.{key} must be a non-empty string")
        return value.strip()

    def number(
        self, table: str, key: str, default: float, *, integer: bool = False, allow_zero: bool = False
    ) -> Any:
        value = self.table(table, required=False).get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
        ):
            kind = "a whole number" if integer else "a number"
            raise ConfigError(f"{self.path}: {table}.{key} must be {kind}")
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(
                f"{self.path}: {table}.{key} must be {'zero or more' if allow_zero else 'positive'}"
            )
        return value

    def relative(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_job(path: Path) -> JobConfig:
    """Read and validate a job file; every problem is a ConfigError (exit 2)."""
    path = path.resolve() if path.exists() else path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a job file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: job file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    r = _Reader(path, data)

    profile_text = r.optional_text("job", "profile") or "simulated"
    if profile_text not in PROFILES:
        raise ConfigError(f"{path}: job.profile must be one of {', '.join(PROFILES)}")
    profile = cast(Profile, profile_text)

    spine = SpineConfig(
        url=r.text("spine", "url"),
        asid=r.text("spine", "asid"),
        party_key=r.text("spine", "party_key"),
        cpa_id=r.text("spine", "cpa_id"),
    )
    sender = Sender(
        asid=r.text("sender", "asid"),
        ods_code=r.text("sender", "ods_code"),
        organisation_name=r.text("sender", "organisation_name"),
        responsible_person_name=r.text("sender", "responsible_person_name"),
        role_code=r.text("sender", "responsible_person_role_code"),
        role_name=r.text("sender", "responsible_person_role_name"),
        role_code_system=r.optional_text("sender", "responsible_person_role_code_system")
        or DEFAULT_ROLE_CODE_SYSTEM,
    )
    for table, asid in (("spine", spine.asid), ("sender", sender.asid)):
        if not _ASID.fullmatch(asid):
            raise ConfigError(f"{path}: {table}.asid must be 12 digits")
    inbound_table = r.table("inbound")
    port = inbound_table.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{path}: inbound.port must be a port number (1-65535)")
    inbound_path = r.text("inbound", "path")
    if not inbound_path.startswith("/"):
        raise ConfigError(f"{path}: inbound.path must start with '/'")
    inbound = InboundConfig(
        host=r.text("inbound", "host"),
        port=port,
        path=inbound_path,
        public_url=r.optional_text("inbound", "public_url"),
    )
    spine_url = urlsplit(spine.url)
    if spine_url.scheme != "https" or not spine_url.hostname:
        raise ConfigError(f"{path}: spine.url must be an https:// URL")
    if profile == "simulated":
        # The simulated profile must never reach a real endpoint (decision g).
        for key, host in (("spine.url", spine_url.hostname), ("inbound.host", inbound.host)):
            if not _is_loopback(host):
                raise ConfigError(f"{path}: {key} must be a loopback address in the simulated profile")

    tls = TlsPaths(
        cert=r.relative(r.text("tls", "cert")),
        key=r.relative(r.text("tls", "key")),
        ca=r.relative(r.text("tls", "ca")),
    )
    limits = Limits(
        rate_per_second=float(r.number("limits", "rate_per_second", Limits.rate_per_second)),
        max_in_flight=r.number("limits", "max_in_flight", Limits.max_in_flight, integer=True),
        reply_timeout_s=float(r.number("limits", "reply_timeout_s", Limits.reply_timeout_s)),
        max_attempts=r.number("limits", "max_attempts", Limits.max_attempts, integer=True),
        max_concurrent_posts=r.number(
            "limits", "max_concurrent_posts", Limits.max_concurrent_posts, integer=True
        ),
        circuit_breaker_failures=r.number(
            "limits", "circuit_breaker_failures", Limits.circuit_breaker_failures, integer=True
        ),
    )
    for key, recommended in RECOMMENDED_LIMITS.items():
        if getattr(limits, key) > recommended:
            log.warning(
                "limits.%s is above the recommended %s; agree it with NHS England first", key, recommended
            )
    http = HttpConfig(
        connect_timeout_s=float(r.number("http", "connect_timeout_s", HttpConfig.connect_timeout_s)),
        response_timeout_s=float(r.number("http", "response_timeout_s", HttpConfig.response_timeout_s)),
        transport_retries=r.number(
            "http", "transport_retries", HttpConfig.transport_retries, integer=True, allow_zero=True
        ),
        backoff_s=float(r.number("http", "backoff_s", HttpConfig.backoff_s)),
    )
    version_code = r.optional_text("hl7", "version_code") or DEFAULT_VERSION_CODE
    if version_code not in _VERSION_CODES:
        raise ConfigError(f"{path}: hl7.version_code is not an HL7StandardVersionCode value")
    not_found = r.table("hl7", required=False).get("not_found_codes", sorted(DEFAULT_NOT_FOUND_CODES))
    if not isinstance(not_found, list) or not all(isinstance(c, str) and c for c in not_found):
        raise ConfigError(f"{path}: hl7.not_found_codes must be a list of strings")

    input_table = r.table("input")
    delimiter = input_table.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigError(f"{path}: input.delimiter must be one character")
    try:
        input_spec = InputSpec(
            nhs_number_column=r.text("input", "nhs_number_column"),
            appointment_date_column=r.optional_text("input", "appointment_date_column"),
            appointment_date_format=r.optional_text("input", "appointment_date_format"),
            delimiter=delimiter,
            encoding=r.optional_text("input", "encoding") or "utf-8",
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: [input] {exc}") from None
    return JobConfig(
        path=path,
        name=_job_name(r),
        input_pattern=r.text("job", "input"),
        output_dir=r.relative(r.text("job", "output_dir")),
        state=r.relative(r.text("job", "state")),
        profile=profile,
        input=input_spec,
        spine=spine,
        sender=sender,
        sender_party_key=r.text("sender", "party_key"),
        inbound=inbound,
        tls=tls,
        limits=limits,
        http=http,
        version_code=version_code,
        not_found_codes=frozenset(not_found),
    )


def _job_name(r: _Reader) -> str:
    name = r.text("job", "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ConfigError(f"{r.path}: job.name may hold letters, digits, '.', '_' and '-' only")
    return name
