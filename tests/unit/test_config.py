"""livegate.config: defaults, durations, validation errors naming the key, LIVEGATE_* overrides,
files, and the CLI's check-config / token commands."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from livegate.config import ChannelOptions, Config, load_config, parse_config, parse_duration
from livegate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LIVEGATE = Path(sys.executable).with_name("livegate")


def parse(raw: dict, environ: dict | None = None) -> Config:
    return parse_config(raw, environ=environ or {})


def config_error(raw: dict, environ: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(raw, environ)
    return info.value


# -- defaults ----------------------------------------------------------------------------


def test_defaults():
    cfg = parse({})
    assert cfg.http_server.address == "127.0.0.1"
    assert cfg.http_server.port == 8000
    assert cfg.http_server.workers == 1
    assert cfg.websocket.handler_prefix == "/connection/websocket"
    assert cfg.websocket.message_size_limit == 65536
    assert cfg.client.ping_interval == 25.0
    assert cfg.client.pong_timeout == 8.0
    assert cfg.client.allow_anonymous_connect_without_token is False
    assert cfg.client.allowed_origins == []
    assert cfg.client.queue_max_size == 1048576
    assert cfg.client.channel_limit == 128
    assert cfg.client.history_max_publication_limit == 300
    assert cfg.client.recovery_max_publication_limit == 300
    assert cfg.client.token.hmac_secret_key == ""
    assert cfg.client.token.user_id_claim == "sub"
    assert cfg.http_api.port == 8001
    assert cfg.engine.type == "memory"
    assert cfg.engine.redis.address == ["redis://127.0.0.1:6379/0"]
    assert cfg.engine.redis.prefix == "livegate"
    assert cfg.channel.private_prefix == "$"
    assert cfg.channel.namespace_boundary == ":"
    assert cfg.channel.user_boundary == "#"
    assert cfg.channel.user_separator == ","
    assert cfg.channel.max_length == 255
    assert cfg.channel.history_meta_ttl == 720 * 3600.0
    assert cfg.channel.namespaces == []
    assert cfg.channel.without_namespace == ChannelOptions()
    assert cfg.channel.without_namespace.history_enabled is False


def test_repo_config_toml_loads():
    cfg = load_config(ROOT / "config.toml", environ={})
    chat = next((ns for ns in cfg.channel.namespaces if ns.name == "chat"), None)
    assert chat is not None and chat.history_enabled and chat.history_ttl == 600.0
    assert cfg.client.token.hmac_secret_key


def test_config_is_frozen():
    cfg = parse({})
    with pytest.raises(ValidationError):
        cfg.http_server.port = 1  # type: ignore[misc]


def test_redis_address_may_be_a_single_string():
    cfg = parse({"engine": {"redis": {"address": "redis://h:1/0"}}})
    assert cfg.engine.redis.address == ["redis://h:1/0"]


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("25s", 25.0), ("5m", 300.0), ("720h", 2592000.0), ("1h30m", 5400.0), ("250ms", 0.25),
    ("1m30s", 90.0), ("1.5s", 1.5), ("0", 0.0), ("0s", 0.0), (" 10s ", 10.0), ("100us", 1e-4),
    (25, 25.0), (0.5, 0.5), (0, 0.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "25", "abc", "5 s", "1x", "-1s", "1h30", "s", "1.5.5s", "h1", "1s2", -1, -0.5, True, False, None, [1], {"s": 1},
])
def test_invalid_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_durations_are_invalid(value):
    # TOML allows `nan` and `inf`; neither is a duration.
    with pytest.raises(ValueError):
        parse_duration(value)


def test_infinite_ping_interval_is_a_config_error():
    # Accepted, it would crash every connect later (the connect reply sends int(ping_interval)).
    err = config_error({"client": {"ping_interval": float("inf")}})
    assert err.key == "client.ping_interval"


def test_duration_fields_accept_strings_and_numbers():
    cfg = parse({"client": {"ping_interval": "1m", "pong_timeout": 10},
                 "channel": {"history_meta_ttl": "1h30m",
                             "without_namespace": {"history_size": 5, "history_ttl": "250ms"}}})
    assert cfg.client.ping_interval == 60.0
    assert cfg.client.pong_timeout == 10.0
    assert cfg.channel.history_meta_ttl == 5400.0
    assert cfg.channel.without_namespace.history_ttl == 0.25
    assert cfg.channel.without_namespace.history_enabled


def test_invalid_duration_names_the_key():
    err = config_error({"client": {"pong_timeout": "8 seconds"}})
    assert err.key == "client.pong_timeout"
    assert "client.pong_timeout" in str(err)


# -- unknown keys ------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "key"), [
    ({"bogus": 1}, "bogus"),
    ({"client": {"ping_intervall": "25s"}}, "client.ping_intervall"),
    ({"client": {"token": {"hmac_secret": "x"}}}, "client.token.hmac_secret"),
    ({"engine": {"redis": {"adress": ["redis://x"]}}}, "engine.redis.adress"),
    ({"channel": {"without_namespace": {"presense": True}}}, "channel.without_namespace.presense"),
    ({"channel": {"namespaces": [{"name": "ok"}, {"name": "chat", "histroy_size": 1}]}},
     "channel.namespaces[1].histroy_size"),
])
def test_unknown_key_is_named(raw, key):
    err = config_error(raw)
    assert err.key == key
    assert key in str(err)
    assert "unknown key" in str(err)


# -- wrong types -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "key"), [
    ({"http_server": {"port": "http"}}, "http_server.port"),
    ({"http_server": {"port": 70000}}, "http_server.port"),
    ({"http_server": {"workers": 0}}, "http_server.workers"),
    ({"client": {"allowed_origins": "*"}}, "client.allowed_origins"),
    ({"client": {"channel_limit": -1}}, "client.channel_limit"),
    ({"client": {"insecure": "maybe"}}, "client.insecure"),
    ({"client": {"token": {"hmac_secret_key": 123}}}, "client.token.hmac_secret_key"),
    ({"client": {"token": "secret"}}, "client.token"),
    ({"engine": {"type": "kafka"}}, "engine.type"),
    ({"log": {"level": "loud"}}, "log.level"),
    ({"channel": {"without_namespace": {"history_size": 1.5, "history_ttl": "1m"}}},
     "channel.without_namespace.history_size"),
    ({"channel": {"namespaces": {"name": "chat"}}}, "channel.namespaces"),
    ({"channel": {"namespaces": [{"name": "chat", "presence": "sometimes"}]}}, "channel.namespaces[0].presence"),
])
def test_wrong_type_is_named(raw, key):
    err = config_error(raw)
    assert err.key == key
    assert str(err).startswith(key + ":")


def test_namespace_without_name():
    assert config_error({"channel": {"namespaces": [{"presence": True}]}}).key == "channel.namespaces[0].name"


# -- combinations ------------------------------------------------------------------------


def test_workers_need_redis():
    err = config_error({"http_server": {"workers": 4}})
    assert err.key == "http_server.workers"
    assert "redis" in str(err)
    cfg = parse({"http_server": {"workers": 4}, "engine": {"type": "redis"}})
    assert cfg.http_server.workers == 4


def test_history_size_without_ttl():
    err = config_error({"channel": {"without_namespace": {"history_size": 10}}})
    assert err.key == "channel.without_namespace.history_ttl"


def test_history_ttl_without_size():
    err = config_error({"channel": {"namespaces": [{"name": "chat", "history_ttl": "1m"}]}})
    assert err.key == "channel.namespaces[0].history_size"


@pytest.mark.parametrize("flag", ["force_recovery", "allow_recovery"])
def test_recovery_without_history(flag):
    err = config_error({"channel": {"namespaces": [{"name": "ab"}, {"name": "chat", flag: True}]}})
    assert err.key == f"channel.namespaces[1].{flag}"
    ok = parse({"channel": {"namespaces": [{"name": "chat", flag: True, "history_size": 1, "history_ttl": 1}]}})
    assert getattr(ok.channel.namespaces[0], flag) is True


def test_duplicate_namespace():
    err = config_error({"channel": {"namespaces": [{"name": "chat"}, {"name": "feed"}, {"name": "chat"}]}})
    assert err.key == "channel.namespaces[2].name"
    assert "duplicate" in str(err)


@pytest.mark.parametrize("name", ["a", "", "has space", "colon:ns", "ümlaut", "sl/ash", "chat\n", "\nchat"])
def test_invalid_namespace_name(name):
    err = config_error({"channel": {"namespaces": [{"name": name}]}})
    assert err.key == "channel.namespaces[0].name"


@pytest.mark.parametrize("name", ["ab", "chat", "a-b_c.d", "NS9"])
def test_valid_namespace_names(name):
    assert [ns.name for ns in parse({"channel": {"namespaces": [{"name": name}]}}).channel.namespaces] == [name]


def test_bad_channel_regex():
    err = config_error({"channel": {"namespaces": [{"name": "chat", "channel_regex": "[a-z"}]}})
    assert err.key == "channel.namespaces[0].channel_regex"
    err = config_error({"channel": {"without_namespace": {"channel_regex": "(unclosed"}}})
    assert err.key == "channel.without_namespace.channel_regex"


def test_ping_at_least_one_second():
    err = config_error({"client": {"ping_interval": "500ms", "pong_timeout": "100ms"}})
    assert err.key == "client.ping_interval"


@pytest.mark.parametrize("pong", ["25s", "30s"])
def test_pong_shorter_than_ping(pong):
    err = config_error({"client": {"ping_interval": "25s", "pong_timeout": pong}})
    assert err.key == "client.pong_timeout"


def test_ping_pong_valid_pair():
    cfg = parse({"client": {"ping_interval": "2s", "pong_timeout": "1s"}})
    assert (cfg.client.ping_interval, cfg.client.pong_timeout) == (2.0, 1.0)


def test_several_problems_all_reported_first_is_key():
    err = config_error({"client": {"bogus": 1}, "http_server": {"port": "x"}})
    assert err.key in ("client.bogus", "http_server.port")
    assert "client.bogus" in str(err) and "http_server.port" in str(err)


# -- environment overrides ---------------------------------------------------------------


def test_env_nested_key_with_underscores():
    cfg = parse({}, {"LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY": "from-env"})
    assert cfg.client.token.hmac_secret_key == "from-env"


def test_env_overrides_file_value():
    cfg = parse({"client": {"token": {"hmac_secret_key": "file"}, "channel_limit": 5}},
                {"LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY": "env"})
    assert cfg.client.token.hmac_secret_key == "env"
    assert cfg.client.channel_limit == 5


def test_env_ints_bools_durations():
    cfg = parse({}, {
        "LIVEGATE_HTTP_SERVER_PORT": "9100",
        "LIVEGATE_HTTP_API_PORT": "9101",
        "LIVEGATE_CLIENT_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN": "true",
        "LIVEGATE_CLIENT_INSECURE": "false",
        "LIVEGATE_CLIENT_PING_INTERVAL": "30s",
        "LIVEGATE_CHANNEL_WITHOUT_NAMESPACE_PRESENCE": "1",
        "LIVEGATE_CHANNEL_WITHOUT_NAMESPACE_HISTORY_META_TTL": "2h",
    })
    assert cfg.http_server.port == 9100
    assert cfg.http_api.port == 9101
    assert cfg.client.allow_anonymous_connect_without_token is True
    assert cfg.client.insecure is False
    assert cfg.client.ping_interval == 30.0
    assert cfg.channel.without_namespace.presence is True
    assert cfg.channel.without_namespace.history_meta_ttl == 7200.0


def test_env_json_lists():
    cfg = parse({}, {
        "LIVEGATE_CLIENT_ALLOWED_ORIGINS": '["https://a.example", "https://b.example"]',
        "LIVEGATE_ENGINE_REDIS_ADDRESS": '["redis://r1:6379/0","redis://r2:6379/0"]',
        "LIVEGATE_CHANNEL_NAMESPACES": '[{"name": "chat", "presence": true}]',
    })
    assert cfg.client.allowed_origins == ["https://a.example", "https://b.example"]
    assert cfg.engine.redis.address == ["redis://r1:6379/0", "redis://r2:6379/0"]
    assert [(ns.name, ns.presence) for ns in cfg.channel.namespaces] == [("chat", True)]


def test_env_alias_key():
    assert parse({}, {"LIVEGATE_PERSISTENCE_SCHEMA": "lg2"}).persistence.schema_name == "lg2"


def test_env_unrelated_variables_are_ignored():
    cfg = parse({}, {"LIVEGATE_CONFIG": "/etc/x.toml", "LIVEGATE_LOOP": "asyncio", "LIVEGATE_TEST_X": "1",
                     "LIVEGATE_CLIENT_NOPE": "1", "OTHER_HTTP_SERVER_PORT": "1", "livegate_http_server_port": "2"})
    assert cfg == parse({})


def test_env_bad_value_names_the_key():
    err = config_error({}, {"LIVEGATE_HTTP_SERVER_PORT": "eighty"})
    assert err.key == "http_server.port"
    err = config_error({}, {"LIVEGATE_CLIENT_PING_INTERVAL": "soon"})
    assert err.key == "client.ping_interval"


def test_env_can_create_an_invalid_combination():
    err = config_error({}, {"LIVEGATE_HTTP_SERVER_WORKERS": "2"})
    assert err.key == "http_server.workers"


def test_parse_config_does_not_mutate_its_input():
    raw = {"client": {"token": {"hmac_secret_key": "file"}}}
    before = copy.deepcopy(raw)
    parse(raw, {"LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY": "env", "LIVEGATE_CLIENT_CHANNEL_LIMIT": "3"})
    assert raw == before
    # The same base mapping parsed again without the environment gives the file's values.
    assert parse(raw).client.token.hmac_secret_key == "file"


def test_process_environment_used_by_default(monkeypatch):
    monkeypatch.setenv("LIVEGATE_CLIENT_CHANNEL_LIMIT", "7")
    assert parse_config({}).client.channel_limit == 7
    assert parse_config({}, environ={}).client.channel_limit == 128


# -- files -------------------------------------------------------------------------------


def test_load_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[client]\nping_interval = "30s"\n[[channel.namespaces]]\nname = "chat"\npresence = true\n')
    cfg = load_config(path, environ={"LIVEGATE_CLIENT_CHANNEL_LIMIT": "9"})
    assert cfg.client.ping_interval == 30.0
    assert cfg.client.channel_limit == 9
    assert [(ns.name, ns.presence) for ns in cfg.channel.namespaces] == [("chat", True)]


def test_load_config_none_gives_defaults():
    assert load_config(None, environ={}) == parse({})


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(tmp_path / "nope.toml", environ={})
    assert "nope.toml" in str(info.value)


def test_load_config_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[client\nping_interval = 25s\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, environ={})


def test_load_config_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[client.token]\nhmac_secrett_key = \"x\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "client.token.hmac_secrett_key"


# -- CLI ---------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEGATE_")}
    return subprocess.run([str(LIVEGATE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def test_cli_check_config_bad_key_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[client]\nping_interval = "25s"\nqueue_max_sise = 10\n')
    proc = run_cli("check-config", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "client.queue_max_sise" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_check_config_bad_key_material_exits_2_without_traceback(tmp_path):
    path = tmp_path / "badkey.toml"
    path.write_text('[client.token]\nrsa_public_key = "not a PEM key"\n')
    proc = run_cli("check-config", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "client.token" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_check_config_ok(tmp_path):
    proc = run_cli("check-config", str(ROOT / "config.toml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_cli_check_config_missing_file(tmp_path):
    proc = run_cli("check-config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "missing.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_token_is_verifiable_with_the_config_secret():
    proc = run_cli("token", "--user", "alice", "--config", "config.toml", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    tok = proc.stdout.strip()
    secret = load_config(ROOT / "config.toml", environ={}).client.token.hmac_secret_key
    claims = jwt.decode(tok, secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert "channel" not in claims
    assert isinstance(claims["exp"], int)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tok, "another-secret-0123456789abcdef0123", algorithms=["HS256"])


def test_cli_token_without_secret_exits_2(tmp_path):
    path = tmp_path / "nosecret.toml"
    path.write_text("[client]\n")
    proc = run_cli("token", "--user", "alice", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "client.token.hmac_secret_key" in proc.stderr
    assert proc.stdout == ""


def test_cli_subscription_token_uses_the_subscription_section_when_enabled(tmp_path):
    path = tmp_path / "subs.toml"
    conn_secret, sub_secret = "c" * 40, "s" * 40
    path.write_text(f'[client.token]\nhmac_secret_key = "{conn_secret}"\n'
                    f'[client.subscription_token]\nenabled = true\nhmac_secret_key = "{sub_secret}"\n')
    proc = run_cli("token", "--user", "alice", "--channel", "chat:x", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert jwt.decode(proc.stdout.strip(), sub_secret, algorithms=["HS256"])["channel"] == "chat:x"
    proc = run_cli("token", "--user", "alice", "--config", str(path), cwd=tmp_path)  # a connection token
    assert jwt.decode(proc.stdout.strip(), conn_secret, algorithms=["HS256"])["sub"] == "alice"


def test_max_publication_size_must_stay_under_the_queue_bound():
    with pytest.raises(ConfigError) as err:
        parse_config({"client": {"queue_max_size": 1000}}, environ={})
    assert err.value.key == "channel.max_publication_size"
    assert parse_config({"client": {"queue_max_size": 1000}, "channel": {"max_publication_size": 999}},
                        environ={}).channel.max_publication_size == 999


@pytest.mark.parametrize(("ns", "where"), [
    ({"subscription_type": "map"}, "map.mode"),
    ({"subscription_type": "map", "map": {"mode": "recoverable"}}, "map: map mode 'recoverable' needs key_ttl"),
    ({"subscription_type": "map", "map": {"mode": "persistent", "key_ttl": "1m"}}, "key_ttl: must be 0"),
    ({"subscription_type": "map", "map": {"mode": "ephemeral", "key_ttl": "1m", "stream_size": 5}}, "stream_size"),
    ({"subscription_type": "map", "map": {"mode": "persistent"}, "history_size": 5, "history_ttl": "1m"},
     "subscription_type"),
    ({"subscription_type": "map", "map": {"mode": "persistent", "client_key": "ip"}}, "client_key"),
    ({"map_clients_presence_channel_prefix": "nowhere:"}, "map_clients_presence_channel_prefix"),
])
def test_map_namespace_errors_name_the_key(ns, where):
    err = config_error({"channel": {"namespaces": [{"name": "mp", **ns}]}})
    assert where.split(":")[0] in str(err), err


def test_map_defaults_by_mode():
    recoverable = Config.model_validate({"channel": {"namespaces": [
        {"name": "mp", "subscription_type": "map", "map": {"mode": "recoverable", "key_ttl": "30m"}}]}})
    opts = recoverable.channel.namespaces[0].map
    assert (opts.stream_size_or_default, opts.stream_ttl_or_default, opts.meta_ttl_or_default) == (100, 60.0, 1800.0)
    assert (opts.page_size(0), opts.page_size(5), opts.page_size(10**6)) == (100, 100, 1000)
    persistent = Config.model_validate({"channel": {"namespaces": [
        {"name": "mp", "subscription_type": "map", "map": {"mode": "persistent", "stream_size": 7}}]}})
    assert (persistent.channel.namespaces[0].map.stream_size_or_default,
            persistent.channel.namespaces[0].map.meta_ttl_or_default) == (7, 0.0)


@pytest.mark.parametrize(("ns", "where"), [
    ({"subscription_type": "map_clients", "map": {"mode": "persistent"}}, "map.mode"),
    ({"subscription_type": "map_users", "map": {"mode": "ephemeral", "key_ttl": "10s"}}, "map.key_ttl"),
    ({"subscription_type": "map", "map": {"mode": "recoverable", "key_ttl": "1h", "meta_ttl": "10m"}}, "meta_ttl"),
    ({"subscription_type": "map", "map": {"mode": "persistent", "meta_ttl": "1h"}}, "meta_ttl"),
    ({"subscription_type": "shared_poll", "shared_poll": {"publish_enabled": True}}, "publish_enabled"),
    ({"subscription_type": "shared_poll", "shared_poll": {"endpoint": "ftp://x"}}, "endpoint"),
])
def test_map_presence_and_shared_poll_errors_name_the_key(ns, where):
    raw = {"shared_poll": {"hmac_secret_key": "k"}, "channel": {"namespaces": [{"name": "mp", **ns}]}}
    assert where in str(config_error(raw))


def test_shared_poll_needs_a_signing_key():
    err = config_error({"channel": {"namespaces": [{"name": "sp", "subscription_type": "shared_poll"}]}})
    assert "shared_poll.hmac_secret_key" in str(err)
