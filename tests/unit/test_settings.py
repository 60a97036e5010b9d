"""Settings: one frozen object from env vars, a TOML file and keyword arguments."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from stream.core.pipeline import EngineConfig
from stream.errors import ConfigError
from stream.settings import Settings, load_settings, parse_k_range


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("CLUSTERSTREAM_"):
            monkeypatch.delenv(name)


def test_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("CLUSTERSTREAM_TOP_M", "3")
    monkeypatch.setenv("CLUSTERSTREAM_APP_ID", "news")
    s = load_settings()
    assert s.top_m == 3 and s.app_id == "news" and s.topic("clicks") == "news-clicks"


def test_toml_file_then_env_then_arguments(monkeypatch, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('top_m = 5\nk = 12\nk_range = "4:9"\nweb_port = 7000\n')
    monkeypatch.setenv("CLUSTERSTREAM_CONFIG", str(path))
    monkeypatch.setenv("CLUSTERSTREAM_K", "20")
    s = load_settings(web_port=7001)
    assert s.top_m == 5  # from the file
    assert s.k == 20  # the environment beats the file
    assert s.web_port == 7001  # arguments beat both
    assert s.k_bounds() == (4, 9)


def test_bad_values_give_one_line_naming_the_field(monkeypatch):
    monkeypatch.setenv("CLUSTERSTREAM_TOP_M", "many")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "top_m" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="k_range"):
        load_settings(k_range="9:4")
    with pytest.raises(ConfigError, match="app_id"):
        load_settings(app_id="bad id")


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.top_m = 4


def test_engine_config_takes_the_same_names():
    s = Settings(dim=8, top_m=3, hysteresis_margin=0.1, cf_max_items=99, threads=2)
    cfg = s.engine_config()
    assert isinstance(cfg, EngineConfig)
    for field in dataclasses.fields(EngineConfig):
        assert getattr(cfg, field.name) == getattr(s, field.name)


def test_security_settings_reach_every_client():
    from stream.io.kafka import aiokafka_config, kafka_python_config

    s = Settings(
        bootstrap_servers="a:9093,b:9093",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    )
    for config in (aiokafka_config(s), kafka_python_config(s)):
        assert config["security_protocol"] == "SASL_PLAINTEXT"
        assert config["sasl_mechanism"] == "PLAIN"
        assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("u", "p")
    assert kafka_python_config(s)["bootstrap_servers"] == ["a:9093", "b:9093"]
    tls = kafka_python_config(
        Settings(security_protocol="SSL", ssl_cafile="/ca.pem", ssl_certfile="/c.pem")
    )
    assert (tls["ssl_cafile"], tls["ssl_certfile"]) == ("/ca.pem", "/c.pem")
    assert "ssl_keyfile" not in tls and "sasl_mechanism" not in tls


def test_parse_k_range():
    assert parse_k_range("2:2") == (2, 2)
    for bad in ("", "3", "a:b", "0:4", "5:4"):
        with pytest.raises(ValueError):
            parse_k_range(bad)


def test_fault_injection_setting_is_checked():
    assert Settings(crash_at="after_outputs:3").crash_at == "after_outputs:3"
    with pytest.raises(ValidationError):
        Settings(crash_at="somewhere:3")


def test_recompute_cron_takes_a_cron_expression_or_off():
    assert load_settings(recompute_cron="30 2 * * 1-5").recompute_cron == "30 2 * * 1-5"
    assert load_settings(recompute_cron="off").recompute_cron == "off"
    with pytest.raises(ConfigError, match="recompute_cron"):
        load_settings(recompute_cron="at four")


def test_secrets_never_print_but_reach_their_users(monkeypatch):
    from stream.app.process import settings_env

    monkeypatch.setenv("CLUSTERSTREAM_ADMIN_TOKEN", "tok-123456")
    s = load_settings(sasl_mechanism="PLAIN", sasl_username="u", sasl_password="pw-987654")
    shown = [repr(s), str(s), s.model_dump_json(), str(s.model_dump())]
    assert not any("tok-123456" in t or "pw-987654" in t for t in shown)
    assert s.admin_token.get_secret_value() == "tok-123456"
    from stream.io.kafka import aiokafka_config, kafka_python_config

    assert kafka_python_config(s)["sasl_plain_password"] == "pw-987654"
    assert aiokafka_config(s)["sasl_plain_password"] == "pw-987654"
    # a child worker gets them in clear through its environment
    env = settings_env(s)
    assert env["CLUSTERSTREAM_ADMIN_TOKEN"] == "tok-123456"
    assert env["CLUSTERSTREAM_SASL_PASSWORD"] == "pw-987654"
    monkeypatch.delenv("CLUSTERSTREAM_ADMIN_TOKEN")
    assert Settings().admin_token is None  # admin endpoints off by default
    assert Settings().web_host == "127.0.0.1"
