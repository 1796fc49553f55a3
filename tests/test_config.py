from pathlib import Path

import pytest

from batch.config import ConfigError, load_job
from tests.support import job_tables, write_job


def _tables(tmp_path: Path) -> dict:
    return job_tables(
        tmp=tmp_path,
        pki=tmp_path / "pki",
        inputs="list.csv",
        spine_url="https://127.0.0.1:9443/reliablemessaging/reliablerequest",
        inbound_port=9444,
    )


def test_a_complete_job_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_job(write_job(tmp_path / "job.toml", _tables(tmp_path)))
    assert cfg.name == "test-job"
    assert cfg.profile == "simulated"
    assert cfg.limits.max_attempts == 3
    assert cfg.limits.max_concurrent_posts == 20
    assert cfg.http.transport_retries == 2
    assert cfg.version_code == "v3INF_DMSv5.7:FIN"
    assert cfg.sender.role_code_system == "2.16.840.1.113883.2.1.3.2.4.17.196"
    assert cfg.inbound.url == "https://127.0.0.1:9444/cpis/replies"


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
        ("limits", "rate_per_second", -1, "limits.rate_per_second must be positive"),
        ("limits", "max_attempts", 1.5, "limits.max_attempts must be a whole number"),
        ("job", "profile", "production", "job.profile must be one of"),
        ("job", "name", "../etc", "job.name may hold"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, table: str, key: str, value: object, message: str) -> None:
    tables = _tables(tmp_path)
    if value is None:
        del tables[table][key]
    else:
        tables[table][key] = value
    with pytest.raises(ConfigError, match=message) as info:
        load_job(write_job(tmp_path / "job.toml", tables))
    assert str(tmp_path / "job.toml") in str(info.value)


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


def test_live_profile_allows_real_hosts(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    tables["job"]["profile"] = "live"
    tables["spine"]["url"] = "https://spine.example.org/reliablemessaging/reliablerequest"
    tables["inbound"]["host"] = "0.0.0.0"
    assert load_job(write_job(tmp_path / "job.toml", tables)).profile == "live"


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
