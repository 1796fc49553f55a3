import grp
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from batch.config import ConfigError, known_keys, load_job
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
    assert any("limits.max_concurrent_posts" in record.getMessage() for record in caplog.records)
