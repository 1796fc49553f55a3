import grp
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from batch import config
from batch.config import (
    ConfigError,
    HttpConfig,
    InboundConfig,
    JobConfig,
    Limits,
    Retention,
    SpineConfig,
    TlsPaths,
    known_keys,
    load_job,
)
from batch.hl7 import Sender
from batch.patients import InputSpec
from spine_sim.jobfile import job_tables, write_job
from tests.support import REPO

PIN = "sha256:" + "AB" * 32
SUBJECT = "CN=msg.spine.example,O=NHS"


def _tables(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return job_tables(
        tmp=tmp_path,
        pki=tmp_path / "pki",
        inputs="list.csv",
        spine_url="https://127.0.0.1:9443/reliablemessaging/reliablerequest",
        inbound_port=9444,
    )


def _load(tmp_path: Path, tables: dict[str, dict[str, Any]], *, before: str = "", after: str = "") -> Any:
    """Load `tables` as a job file, with raw TOML text around it for what write_job cannot express."""
    job = write_job(tmp_path / "job.toml", tables)
    job.write_text(before + job.read_text() + after)
    return load_job(job)


def _refused(tmp_path: Path, tables: dict[str, dict[str, Any]], message: str, **raw: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _load(tmp_path, tables, **raw)
    assert str(info.value).startswith(f"{tmp_path / 'job.toml'}: ")
    assert "\n" not in str(info.value)


def test_a_complete_job_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_job(write_job(tmp_path / "job.toml", _tables(tmp_path)))
    assert cfg.name == "test-job"
    assert cfg.profile == "simulated"
    assert cfg.limits.max_attempts == 3
    assert cfg.limits.max_concurrent_posts == 20
    assert cfg.http.transport_retries == 2
    assert cfg.version_code == "v3INF_DMSv5.7:FIN"
    assert cfg.not_found_codes == frozenset({"NHSNCC002"})
    assert cfg.sender.role_code_system == "2.16.840.1.113883.2.1.3.2.4.17.196"
    assert cfg.inbound.url == "https://127.0.0.1:9444/cpis/replies"
    assert cfg.inbound.allowed_peers is None
    assert cfg.group is None
    assert cfg.retention.raw_days == 30
    assert (cfg.input.delimiter, cfg.input.encoding, cfg.input.appointment_date_format) == (
        ",",
        "utf-8",
        "%d/%m/%Y",
    )


def test_a_complete_job_is_read_into_the_whole_record(tmp_path: Path) -> None:
    """Every key lands in its own field, and every optional key left out takes its documented default."""
    path = write_job(tmp_path / "job.toml", _tables(tmp_path))
    pki = tmp_path / "pki"
    assert load_job(path) == JobConfig(
        path=path.resolve(),
        name="test-job",
        input_pattern="list.csv",
        output_dir=tmp_path / "out",
        state=tmp_path / "state" / "state.sqlite",
        profile="simulated",
        input=InputSpec(
            nhs_number_column="NHS No",
            appointment_date_column="Appointment Date",
            appointment_date_format="%d/%m/%Y",
        ),
        spine=SpineConfig(
            url="https://127.0.0.1:9443/reliablemessaging/reliablerequest",
            asid="999000000001",
            party_key="SIMSPINE-0000001",
            cpa_id="S1SIMCPIS0001",
        ),
        sender=Sender(
            asid="999000000101",
            ods_code="SIM01",
            organisation_name="Simulated Test Trust",
            responsible_person_name="Dr Alex Example",
            role_code="R0260",
            role_name="General Medical Practitioner",
            role_code_system="2.16.840.1.113883.2.1.3.2.4.17.196",
        ),
        sender_party_key="SIMCLINIC-0000101",
        inbound=InboundConfig(host="127.0.0.1", port=9444, path="/cpis/replies"),
        tls=TlsPaths(cert=pki / "cpis-batch.pem", key=pki / "cpis-batch.key", ca=pki / "ca.pem"),
        limits=Limits(
            rate_per_second=50.0,
            max_in_flight=100,
            reply_timeout_s=10.0,
            max_attempts=3,
            max_concurrent_posts=20,
            circuit_breaker_failures=5,
        ),
        http=HttpConfig(connect_timeout_s=10.0, response_timeout_s=30.0, transport_retries=2, backoff_s=0.05),
        version_code="v3INF_DMSv5.7:FIN",
        not_found_codes=frozenset({"NHSNCC002"}),
        group=None,
        retention=Retention(raw_days=30),
    )


def test_every_optional_key_is_read_into_its_field(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    tables = _tables(tmp_path)
    tables["job"].update(profile="test", group=group, output_dir="reports", state="/var/tmp/cpis/state.db")
    tables["input"].update(
        delimiter=";",
        encoding="latin-1",
        clinic_column="Clinic",
        name_column="Name",
        date_of_birth_column="DOB",
        window_days=0,
    )
    tables["sender"]["responsible_person_role_code_system"] = "2.16.840.1.113883.2.1.3.2.4.17.124"
    tables["spine"]["url"] = "https://msg.spine.example:443/reliablemessaging/reliablerequest"
    tables["inbound"].update(
        host=" ::1 ", public_url="https://replies.example/cpis", allowed_peers=[SUBJECT, PIN]
    )
    tables["tls"].update(cert="~/cert.pem", key="keys/../key.pem", ca="  ca.pem  ")
    tables["limits"] = {
        "rate_per_second": 2.5,
        "max_in_flight": 7,
        "reply_timeout_s": 1,
        "max_attempts": 1,
        "max_concurrent_posts": 1,
        "circuit_breaker_failures": 1,
    }
    tables["http"] = {
        "connect_timeout_s": 0.5,
        "response_timeout_s": 2,
        "transport_retries": 0,
        "backoff_s": 3,
    }
    tables["hl7"] = {"version_code": "V3NPfIT3.0", "not_found_codes": ["A1", "B2", "A1"]}
    tables["retention"] = {"raw_days": 1}
    cfg = _load(tmp_path, tables)
    assert (cfg.profile, cfg.group, cfg.output_dir, cfg.state) == (
        "test",
        group,
        tmp_path / "reports",
        Path("/var/tmp/cpis/state.db"),
    )
    assert cfg.input == InputSpec(
        nhs_number_column="NHS No",
        appointment_date_column="Appointment Date",
        appointment_date_format="%d/%m/%Y",
        delimiter=";",
        encoding="latin-1",
        clinic_column="Clinic",
        name_column="Name",
        date_of_birth_column="DOB",
        window_days=0,
    )
    assert cfg.sender.role_code_system == "2.16.840.1.113883.2.1.3.2.4.17.124"
    assert cfg.inbound == InboundConfig(
        host="::1",
        port=9444,
        path="/cpis/replies",
        public_url="https://replies.example/cpis",
        allowed_peers=(SUBJECT, "sha256:" + "ab" * 32),
    )
    assert cfg.inbound.url == "https://replies.example/cpis"
    assert cfg.tls == TlsPaths(
        cert=Path("~/cert.pem").expanduser(), key=tmp_path / "key.pem", ca=tmp_path / "ca.pem"
    )
    assert cfg.limits == Limits(2.5, 7, 1.0, 1, 1, 1)
    assert cfg.http == HttpConfig(0.5, 2.0, 0, 3.0)
    assert (cfg.version_code, cfg.not_found_codes) == ("V3NPfIT3.0", frozenset({"A1", "B2"}))
    assert cfg.retention == Retention(raw_days=1)


@pytest.mark.parametrize(
    ("host", "port", "path", "url"),
    [
        ("127.0.0.1", 9444, "/r", "https://127.0.0.1:9444/r"),
        ("::1", 1, "/", "https://[::1]:1/"),
        ("localhost", 65535, "/a/b", "https://localhost:65535/a/b"),
    ],
)
def test_the_inbound_url_is_built_from_host_port_and_path(host: str, port: int, path: str, url: str) -> None:
    assert InboundConfig(host=host, port=port, path=path).url == url
    assert InboundConfig(host=host, port=port, path=path, public_url="").url == url


def test_a_relative_job_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_job(tmp_path / "job.toml", _tables(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = load_job(Path("job.toml"))
    assert cfg.path == (tmp_path / "job.toml").resolve()
    assert cfg.base_dir == tmp_path.resolve()
    assert cfg.lock_path == tmp_path / "state" / "state.sqlite.lock"


# The parsers and the schema are built when the module is imported; these call them directly, so that a
# test runs each under mutation (an import-time call counts only towards the first test mutmut runs).


@pytest.mark.parametrize(
    ("allow_zero", "value", "result"),
    [
        (True, 0, 0),
        (True, 7, 7),
        (True, -1, "must be zero or more"),
        (False, 1, 1),
        (False, 0, "must be positive"),
        (False, -1, "must be positive"),
        (False, True, "must be a whole number (found true/false)"),
        (True, 1.0, "must be a whole number (found a decimal number)"),
    ],
)
def test_whole_numbers(allow_zero: bool, value: object, result: object) -> None:
    parse = config._whole(allow_zero=allow_zero)
    if isinstance(result, str):
        with pytest.raises(config._Invalid, match=f"^{re.escape(result)}$"):
            parse(value)
    else:
        assert parse(value) == result


def test_tables_declare_their_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_SCHEMA", {})
    table = config._Table("extra", required=True)
    optional = config._Table("optional", required=False)
    key = table.key("size", int, 3)
    assert (table.name, table.required, table.keys) == ("extra", True, {"size": key})
    assert (optional.name, optional.required, optional.keys) == ("optional", False, {})
    assert key == config._Key("extra", "size", int, 3)
    assert key.dotted == "extra.size"
    assert config._SCHEMA == {"extra": table, "optional": optional}


def test_matching_text() -> None:
    parse = config._matching(re.compile(r"[0-9]{3}"), "must be 3 digits")
    assert parse(" 123 ") == "123"
    with pytest.raises(config._Invalid, match=r"^must be 3 digits$"):
        parse("1234")


def test_the_shipped_job_file_loads() -> None:
    cfg = load_job(REPO / "jobs" / "nightly-clinic-precheck.toml")
    assert (cfg.name, cfg.profile, cfg.retention.raw_days) == ("nightly-clinic-precheck", "simulated", 30)


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("sender", "responsible_person_name", None, "sender.responsible_person_name is required"),
        ("sender", "ods_code", "", "sender.ods_code must be a non-empty string"),
        ("sender", "asid", "12345", "sender.asid must be 12 digits"),
        ("spine", "url", "http://127.0.0.1/x", "spine.url must be an https:// URL"),
        ("spine", "url", "https://spine.example.org/x", "spine.url must be a loopback address"),
        ("inbound", "host", "0.0.0.0", "inbound.host must be a loopback address"),
        ("inbound", "port", 70000, "inbound.port must be a port number"),
        ("inbound", "path", "cpis/replies", "inbound.path must start with '/'"),
        ("limits", "rate_per_second", -1, "limits.rate_per_second must be positive"),
        ("limits", "max_attempts", 1.5, "limits.max_attempts must be a whole number"),
        ("limits", "max_in_flight", 0, "limits.max_in_flight must be positive"),
        ("http", "transport_retries", -1, "http.transport_retries must be zero or more"),
        ("job", "profile", "production", "job.profile must be one of simulated, test, live"),
        ("job", "name", "../etc", "job.name may hold"),
        ("hl7", "version_code", "v3", "hl7.version_code is not an HL7StandardVersionCode value"),
        ("input", "delimiter", ";;", "input.delimiter must be one character"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, table: str, key: str, value: object, message: str) -> None:
    tables = _tables(tmp_path)
    if value is None:
        del tables[table][key]
    else:
        tables.setdefault(table, {})[key] = value
    _refused(tmp_path, tables, re.escape(message))


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("job", "name", 5, "job.name must be a non-empty string (found a whole number)"),
        ("job", "profile", True, "job.profile must be a non-empty string (found true/false)"),
        ("job", "output_dir", ["out"], "job.output_dir must be a non-empty string (found a list)"),
        (
            "input",
            "nhs_number_column",
            1.0,
            "input.nhs_number_column must be a non-empty string (found a decimal",
        ),
        ("input", "delimiter", 44, "input.delimiter must be one character (found a whole number)"),
        ("spine", "url", 443, "spine.url must be a non-empty string (found a whole number)"),
        (
            "sender",
            "responsible_person_role_code_system",
            False,
            "must be a non-empty string (found true/false)",
        ),
        ("inbound", "port", "9444", "inbound.port must be a port number (1-65535) (found a string)"),
        ("inbound", "port", True, "inbound.port must be a port number (1-65535) (found true/false)"),
        ("tls", "ca", ["ca.pem"], "tls.ca must be a non-empty string (found a list)"),
        ("limits", "max_in_flight", "100", "limits.max_in_flight must be a whole number (found a string)"),
        ("limits", "rate_per_second", True, "limits.rate_per_second must be a number (found true/false)"),
        ("limits", "reply_timeout_s", math.inf, "limits.reply_timeout_s must be a finite number"),
        ("limits", "reply_timeout_s", math.nan, "limits.reply_timeout_s must be a finite number"),
        ("http", "backoff_s", "1", "http.backoff_s must be a number (found a string)"),
        ("http", "transport_retries", 2.0, "http.transport_retries must be a whole number (found a decimal"),
        (
            "hl7",
            "not_found_codes",
            "NHSNCC002",
            "hl7.not_found_codes must be a list of strings (found a string)",
        ),
        ("hl7", "not_found_codes", ["NHSNCC002", 7], "hl7.not_found_codes must be a list of strings"),
        ("retention", "raw_days", "30", "retention.raw_days must be a whole number (found a string)"),
        ("job", "group", 0, "job.group must be a non-empty string (found a whole number)"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(
    tmp_path: Path, table: str, key: str, value: object, message: str
) -> None:
    tables = _tables(tmp_path)
    tables.setdefault(table, {})[key] = value
    _refused(tmp_path, tables, re.escape(message))


def test_dates_and_tables_where_values_belong(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    del tables["http"]
    _refused(
        tmp_path,
        tables,
        re.escape("http.backoff_s must be a number (found a date or time)"),
        after="[http]\nbackoff_s = 2024-01-01\n",
    )
    _refused(
        tmp_path,
        tables,
        re.escape("http.backoff_s must be a number (found a table)"),
        after="[http]\nbackoff_s = { seconds = 1 }\n",
    )
    _refused(tmp_path, tables, re.escape("[http] must be a table"), before="http = 5\n")
    _refused(tmp_path, tables, re.escape("[http] must be a table"), after="[[http]]\nbackoff_s = 1\n")


def test_missing_table_and_bad_toml(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    del tables["tls"]
    with pytest.raises(ConfigError, match=r"missing table \[tls\]"):
        load_job(write_job(tmp_path / "job.toml", tables))
    (tmp_path / "bad.toml").write_text("[job\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "absent.toml")


# --- strictness: nothing undeclared is quietly ignored -------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ("limits", "max_inflight", "unknown key `limits.max_inflight`; did you mean `limits.max_in_flight`?"),
        (
            "inbound",
            "allowed_peer",
            "unknown key `inbound.allowed_peer`; did you mean `inbound.allowed_peers`?",
        ),
        ("inbound", "alowed_peers", "did you mean `inbound.allowed_peers`?"),
        ("retention", "raw_day", "unknown key `retention.raw_day`; did you mean `retention.raw_days`?"),
        # The right key in the wrong table.
        (
            "job",
            "nhs_number_column",
            "unknown key `job.nhs_number_column`; did you mean `input.nhs_number_column`?",
        ),
        (
            "limits",
            "colour",
            "unknown key `limits.colour` (known keys in [limits]: rate_per_second, max_in_flight, "
            "reply_timeout_s, max_attempts, max_concurrent_posts, circuit_breaker_failures)",
        ),
    ],
)
def test_an_unknown_key_is_refused_with_the_nearest_known_one(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    tables = _tables(tmp_path)
    tables.setdefault(table, {})[key] = "5"
    _refused(tmp_path, tables, re.escape(message))


def test_a_key_only_loosely_like_one_of_another_table_is_not_guessed_at(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["tls"]["timeout"] = 5  # 0.64 like limits.reply_timeout_s: too far to be a slip
    _refused(tmp_path, tables, re.escape("unknown key `tls.timeout` (known keys in [tls]: cert, key, ca)"))


def test_a_misspelt_required_key_is_reported_as_misspelt_not_missing(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["input"]["nhs_number_colum"] = tables["input"].pop("nhs_number_column")
    _refused(tmp_path, tables, re.escape("did you mean `input.nhs_number_column`?"))


def test_an_unknown_table_is_refused(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["limit"] = tables.pop("limits")
    _refused(tmp_path, tables, re.escape("unknown table [limit]; did you mean [limits]?"))
    tables = _tables(tmp_path)
    tables["extras"] = {"colour": "blue"}
    _refused(tmp_path, tables, re.escape("unknown table [extras] (known tables: job, input, spine, sender"))


def test_keys_outside_tables_and_nested_tables_are_refused(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    _refused(
        tmp_path,
        tables,
        re.escape("unknown key `profile` outside any table; did you mean `job.profile`?"),
        before='profile = "live"\n',
    )
    _refused(
        tmp_path, tables, re.escape("unknown key `colour` outside any table"), before='colour = "blue"\n'
    )
    _refused(tmp_path, tables, re.escape("unknown key `limits.extra`"), after="[limits.extra]\nx = 1\n")


def test_readme_documents_only_known_keys() -> None:
    """The README's key table and the declared schema cannot drift apart unnoticed."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Job file keys", 1)[1].split("\n\n", 2)[1]
    documented: set[str] = set()
    table = ""
    for row in section.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table = cells[0].strip("`[]") or table
        documented.update(f"{table}.{key}" for key in re.findall(r"`([a-z_0-9]+)`", cells[1]))
    declared = {f"{t}.{k}" for t, keys in known_keys().items() for k in keys}
    assert documented <= declared
    assert declared == documented


# --- profiles -------------------------------------------------------------------------------------------


def test_live_profile_allows_real_hosts(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["job"]["profile"] = "live"
    tables["spine"]["url"] = "https://spine.example.org/reliablemessaging/reliablerequest"
    tables["inbound"]["host"] = "0.0.0.0"
    tables["inbound"]["allowed_peers"] = [SUBJECT]
    assert load_job(write_job(tmp_path / "job.toml", tables)).profile == "live"


@pytest.mark.parametrize("profile", ["test", "live"])
def test_test_and_live_profiles_require_allowed_peers(tmp_path: Path, profile: str) -> None:
    tables = _tables(tmp_path)
    tables["job"]["profile"] = profile
    _refused(tmp_path, tables, re.escape(f"inbound.allowed_peers is required for profile '{profile}'"))


# --- the keys added for issue 7 -------------------------------------------------------------------------


def test_allowed_peers_are_pins_or_subjects(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["job"]["profile"] = "test"
    subject = "CN=Spine Messaging,OU=Spine,O=NHS England,C=GB"
    tables["inbound"]["allowed_peers"] = [PIN, subject, "SHA256:" + "0f" * 32, "1.2.3.4=x"]
    cfg = _load(tmp_path, tables)
    # Hex is normalised to lower case; a subject is kept exactly as written.
    assert cfg.inbound.allowed_peers == ("sha256:" + "ab" * 32, subject, "sha256:" + "0f" * 32, "1.2.3.4=x")


def test_allowed_peers_may_be_set_in_the_simulated_profile(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["inbound"]["allowed_peers"] = [SUBJECT]
    assert _load(tmp_path, tables).inbound.allowed_peers == (SUBJECT,)


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ([], "inbound.allowed_peers is empty, which would refuse every reply"),
        (SUBJECT, "inbound.allowed_peers must be a list of strings (found a string)"),
        ([SUBJECT, ""], "inbound.allowed_peers must be a list of strings (each non-empty)"),
        ([SUBJECT, 5], "inbound.allowed_peers must be a list of strings"),
        (["sha256:abc"], "inbound.allowed_peers entry 1 must be 'sha256:' and 64 hex digits"),
        (
            [SUBJECT, "sha256:" + "g" * 64],
            "inbound.allowed_peers entry 2 must be 'sha256:' and 64 hex digits",
        ),
        ([PIN + "00"], "entry 1 must be 'sha256:' and 64 hex digits"),
        (["msg.spine.example"], "entry 1 ('msg.spine.example') is neither 'sha256:' and 64 hex digits nor a"),
        (["CN="], "entry 1 ('CN=') is neither"),
        (["cn=msg.spine.example"], "entry 1 ('cn=msg.spine.example') is neither"),
        (["=x"], "entry 1 ('=x') is neither"),
    ],
)
def test_bad_allowed_peers_are_refused(tmp_path: Path, peers: object, message: str) -> None:
    tables = _tables(tmp_path)
    tables["inbound"]["allowed_peers"] = peers
    _refused(tmp_path, tables, re.escape(message))


def test_group_must_exist(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    existing = grp.getgrgid(os.getgid()).gr_name
    tables["job"]["group"] = existing
    assert _load(tmp_path, tables).group == existing
    missing = "cpis-no-such-group"
    with pytest.raises(KeyError):
        grp.getgrnam(missing)
    tables["job"]["group"] = missing
    _refused(tmp_path, tables, re.escape(f"job.group names no Unix group on this machine ('{missing}')"))
    tables["job"]["group"] = "  "
    _refused(tmp_path, tables, re.escape("job.group must be a non-empty string"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be positive"),
        (-3, "must be positive"),
        (1.5, "must be a whole number (found a decimal number)"),
    ],
)
def test_retention_raw_days(tmp_path: Path, value: object, message: str) -> None:
    tables = _tables(tmp_path)
    tables["retention"] = {"raw_days": 7}
    assert _load(tmp_path, tables).retention.raw_days == 7
    tables["retention"] = {"raw_days": 1}
    assert _load(tmp_path, tables).retention.raw_days == 1
    tables["retention"] = {"raw_days": value}
    _refused(tmp_path, tables, re.escape(f"retention.raw_days {message}"))


# --- other ----------------------------------------------------------------------------------------------


def test_paths_are_relative_to_the_job_file(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["tls"]["cert"] = "pki/cert.pem"
    cfg = load_job(write_job(tmp_path / "job.toml", tables))
    assert cfg.tls.cert == (tmp_path / "pki" / "cert.pem").resolve()


def test_an_unusable_input_encoding_is_a_config_error(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["input"]["encoding"] = "utf-16"
    with pytest.raises(ConfigError, match=r"\[input\].*encoding"):
        load_job(write_job(tmp_path / "job.toml", tables))


def test_limits_above_the_recommended_ones_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tables = _tables(tmp_path)
    tables["limits"]["max_concurrent_posts"] = 30
    with caplog.at_level(logging.WARNING, logger="batch.config"):
        cfg = _load(tmp_path, tables)
    assert cfg.limits.max_concurrent_posts == 30
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "batch.config",
            logging.WARNING,
            "limits.rate_per_second is above the recommended 5.0; agree it with NHS England first",
        ),
        (
            "batch.config",
            logging.WARNING,
            "limits.max_concurrent_posts is above the recommended 20; agree it with NHS England first",
        ),
    ]


def test_limits_at_the_recommended_ones_are_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tables = _tables(tmp_path)
    tables["limits"] = {"rate_per_second": 5, "max_in_flight": 100, "max_concurrent_posts": 20}
    with caplog.at_level(logging.WARNING, logger="batch.config"):
        _load(tmp_path, tables)
    assert caplog.records == []
    tables["limits"] = {"rate_per_second": 5.001, "max_in_flight": 101}
    with caplog.at_level(logging.WARNING, logger="batch.config"):
        _load(tmp_path, tables)
    assert [r.getMessage().split(" is above")[0] for r in caplog.records] == [
        "limits.rate_per_second",
        "limits.max_in_flight",
    ]


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("inbound", "port", 0, "inbound.port must be a port number (1-65535)"),
        ("inbound", "port", 65536, "inbound.port must be a port number (1-65535)"),
        ("inbound", "port", -1, "inbound.port must be a port number (1-65535)"),
        ("limits", "rate_per_second", 0, "limits.rate_per_second must be positive"),
        ("limits", "reply_timeout_s", 0.0, "limits.reply_timeout_s must be positive"),
        ("limits", "reply_timeout_s", 10**400, "limits.reply_timeout_s must be a finite number"),
        ("limits", "max_attempts", 0, "limits.max_attempts must be positive"),
        ("limits", "max_attempts", -1, "limits.max_attempts must be positive"),
        ("http", "transport_retries", -1, "http.transport_retries must be zero or more"),
        ("input", "window_days", -1, "input.window_days must be zero or more"),
        ("input", "delimiter", "", "input.delimiter must be one character"),
        ("job", "input", "  ", "job.input must be a non-empty string"),
        ("inbound", "path", " /x", None),
        ("spine", "url", "https:///no-host", "spine.url must be an https:// URL"),
        ("spine", "url", "https://localhost:9443/x", None),
        ("spine", "url", "https://[::1]:9443/x", None),
        ("spine", "url", "https://127.0.0.2/x", None),
        (
            "spine",
            "url",
            "https://128.0.0.1/x",
            "spine.url must be a loopback address in the simulated profile",
        ),
        ("inbound", "host", "localhost", None),
        ("inbound", "host", "[::1]", None),
        ("inbound", "host", "localhost.example", "inbound.host must be a loopback address in the simulated"),
        ("inbound", "port", 1, None),
        ("inbound", "port", 65535, None),
        ("limits", "rate_per_second", 1e-9, None),
        ("http", "transport_retries", 0, None),
    ],
)
def test_boundaries_of_values(
    tmp_path: Path, table: str, key: str, value: object, message: str | None
) -> None:
    tables = _tables(tmp_path)
    tables.setdefault(table, {})[key] = value
    if message is None:
        _load(tmp_path, tables)
    else:
        _refused(tmp_path, tables, re.escape(message))


def test_a_job_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: is a directory, not a job file")):
        load_job(tmp_path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[job]\nname = "Zo\xeb"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(f"{latin}: job file is not UTF-8 text")):
        load_job(latin)
    absent = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{absent}: job file not found")):
        load_job(absent)
    bad = tmp_path / "bad.toml"
    bad.write_text("[job\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: not valid TOML (")):
        load_job(bad)
