"""The command line: where every command finds its config, ``genconfig``, and the warnings of
``check-config`` (livegate.config_warnings, one test per warning).

The commands run in this process (``livegate.cli.main``), in a temporary current directory,
with every ``LIVEGATE_*`` variable of the test environment removed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from livegate import cli
from livegate.cli import discover_config, main, worker_argv
from livegate.config import load_config, parse_config
from livegate.config_warnings import DEMO_SECRETS, FOREIGN_ORIGINS, foreign_origin, origin_matches, warnings
from livegate.server.websocket import origin_allowed

ROOT = Path(__file__).resolve().parents[2]
SECRET_A, SECRET_B, SECRET_C = ("a" * 40, "b" * 40, "c" * 40)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in list(os.environ):
        if var.startswith("LIVEGATE_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def secret_config(path: Path, secret: str, extra: str = "") -> Path:
    path.write_text(f'[client.token]\nhmac_secret_key = "{secret}"\n{extra}')
    return path


def signed_with(token: str, secret: str) -> bool:
    try:
        jwt.decode(token, secret, algorithms=["HS256"])
    except jwt.InvalidSignatureError:
        return False
    return True


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- discovery -----------------------------------------------------------------------------


def test_discovery_order(tmp_path):
    (tmp_path / "config.toml").write_text("")
    env = {"LIVEGATE_CONFIG": "/etc/env.toml"}
    assert discover_config("/x.toml", env, str(tmp_path)).describe() == "/x.toml (from --config)"
    assert discover_config(None, env, str(tmp_path)).describe() == "/etc/env.toml (from $LIVEGATE_CONFIG)"
    assert discover_config(None, {}, str(tmp_path)).describe() == "./config.toml (found in the current directory)"
    (tmp_path / "config.toml").unlink()
    none = discover_config(None, {"LIVEGATE_CONFIG": ""}, str(tmp_path))
    assert none.path is None and none.describe().startswith("none (built-in defaults")
    (tmp_path / "config.toml").mkdir()  # a directory of that name is not a config
    assert discover_config(None, {}, str(tmp_path)).path is None


def test_token_finds_config_toml_in_the_current_directory(capsys, tmp_path):
    secret_config(tmp_path / "config.toml", SECRET_A)
    code, out, err = run(capsys, "token", "--user", "alice")
    assert code == 0, err
    assert jwt.decode(out.strip(), SECRET_A, algorithms=["HS256"])["sub"] == "alice"
    assert "livegate: config: ./config.toml (found in the current directory)\n" in err


def test_env_beats_the_current_directory_and_the_flag_beats_both(capsys, tmp_path, monkeypatch):
    secret_config(tmp_path / "config.toml", SECRET_A)
    env_file = secret_config(tmp_path / "env.toml", SECRET_B)
    flag_file = secret_config(tmp_path / "flag.toml", SECRET_C)
    monkeypatch.setenv("LIVEGATE_CONFIG", str(env_file))
    code, out, err = run(capsys, "token", "--user", "alice")
    assert code == 0 and signed_with(out.strip(), SECRET_B) and not signed_with(out.strip(), SECRET_A)
    assert f"livegate: config: {env_file} (from $LIVEGATE_CONFIG)" in err
    code, out, err = run(capsys, "token", "--user", "alice", "--config", str(flag_file))
    assert code == 0 and signed_with(out.strip(), SECRET_C)
    assert f"livegate: config: {flag_file} (from --config)" in err


def test_environment_overrides_apply_on_top_of_the_discovered_file(capsys, tmp_path, monkeypatch):
    secret_config(tmp_path / "config.toml", SECRET_A)
    monkeypatch.setenv("LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET_B)
    code, out, _ = run(capsys, "token", "--user", "alice")
    assert code == 0 and signed_with(out.strip(), SECRET_B)


def test_no_config_anywhere_is_said_and_token_points_to_genconfig(capsys):
    code, out, err = run(capsys, "token", "--user", "alice")
    assert code == 2 and out == ""
    assert "livegate: config: none (built-in defaults;" in err
    assert "client.token.hmac_secret_key: is empty" in err and "livegate genconfig" in err


def test_a_missing_file_named_by_the_environment_is_an_error(capsys, tmp_path, monkeypatch):
    secret_config(tmp_path / "config.toml", SECRET_A)  # not a fallback for a file named explicitly
    monkeypatch.setenv("LIVEGATE_CONFIG", str(tmp_path / "gone.toml"))
    code, out, err = run(capsys, "token", "--user", "alice")
    assert code == 2 and out == "" and "gone.toml" in err


def test_serve_reads_the_discovered_file(capsys, tmp_path):
    (tmp_path / "config.toml").write_text("[client]\nping_intervall = 3\n")
    code, _, err = run(capsys, "serve")
    assert code == 2
    # Its log is not set up when the config fails: the source is said on stderr with the error.
    assert "livegate: config: ./config.toml (found in the current directory)" in err
    assert "client.ping_intervall: unknown key" in err


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back after a test that runs setup_logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("found, where", [
    ("cwd", "found in the current directory"), ("flag", "from --config"), ("env", "from $LIVEGATE_CONFIG")])
def test_serve_says_which_config_in_its_log_not_in_a_plain_line(capsys, tmp_path, monkeypatch, root_logger,
                                                                 found, where):
    """stderr of serve is its log (JSON lines here): the config source is a record of it, with
    the path and how it was found as fields, and no plain-text line comes before it."""
    (tmp_path / "config.toml").write_text('[log]\nformat = "json"\n')
    monkeypatch.setattr(cli, "_run", lambda factory: None)  # everything up to serving, no sockets
    argv = ["serve"]
    if found == "flag":
        argv += ["--config", "config.toml"]
    elif found == "env":
        monkeypatch.setenv("LIVEGATE_CONFIG", "config.toml")
    code, out, err = run(capsys, *argv)
    assert code == 0 and out == "", err
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    assert records[0]["logger"] == "livegate.config"
    assert records[0]["config_found"] == where
    assert records[0]["config_file"] == ("./config.toml" if found == "cwd" else "config.toml")
    assert records[0]["level"] == "info" and "livegate: config:" not in err


def test_serve_on_built_in_defaults_logs_a_null_file(capsys, monkeypatch, root_logger):
    monkeypatch.setenv("LIVEGATE_LOG_FORMAT", "json")
    monkeypatch.setattr(cli, "_run", lambda factory: None)
    code, _, err = run(capsys, "serve")
    assert code == 0, err
    record = json.loads(err.splitlines()[0])
    assert record["config_file"] is None and record["config_found"].startswith("built-in defaults")


def test_migrate_reads_the_discovered_file(capsys, tmp_path, monkeypatch):
    env_file = tmp_path / "env.toml"
    env_file.write_text('[persistence]\nschema = "Not A Schema"\n')
    monkeypatch.setenv("LIVEGATE_CONFIG", str(env_file))
    code, _, err = run(capsys, "migrate", "--status")
    assert code == 2 and "(from $LIVEGATE_CONFIG)" in err and "persistence.schema" in err


def test_supervisor_workers_get_the_discovered_file(capsys, tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text('[http_server]\nworkers = 2\n[engine]\ntype = "redis"\n')
    started: list[list[str]] = []

    def supervise(config: Any, argv: list[str], source: Any) -> int:
        started.append(argv)
        return 0

    monkeypatch.setattr(cli, "_supervise", supervise)
    monkeypatch.setattr(cli, "_import_app", lambda spec: None)  # the app is not what this is about
    code, _, _ = run(capsys, "serve", "--app", "myapp:app")
    assert code == 0
    (argv,) = started
    assert argv[-5:] == ["serve", "--config", str(tmp_path / "config.toml"), "--app", "myapp:app"]
    assert worker_argv(None, None)[-1] == "serve"  # built-in defaults: no --config at all


def test_a_worker_does_not_repeat_the_config_line(capsys, tmp_path, monkeypatch):
    secret_config(tmp_path / "config.toml", SECRET_A)
    monkeypatch.setenv("LIVEGATE_WORKER", "1")
    code, _, err = run(capsys, "token", "--user", "alice")
    assert code == 0 and "livegate: config:" not in err


# -- check-config ----------------------------------------------------------------------------


def test_check_config_positional_file_still_works(capsys, tmp_path):
    path = tmp_path / "some.toml"
    path.write_text('[client]\nallowed_origins = ["https://app.example.com"]\n')
    code, out, err = run(capsys, "check-config", str(path))
    assert code == 0, err
    assert out == f"{path}: ok (1 warning)\n"  # http_api.key is empty
    assert f"livegate: config: {path} (given on the command line)" in err


def test_check_config_without_argument_discovers(capsys, tmp_path):
    (tmp_path / "config.toml").write_text("[client]\nqueue_max_sise = 1\n")
    code, _, err = run(capsys, "check-config")
    assert code == 2
    assert "found in the current directory" in err and "client.queue_max_sise" in err
    (tmp_path / "config.toml").unlink()
    code, out, err = run(capsys, "check-config")
    assert code == 0 and out.startswith("built-in defaults: ok")


def test_a_config_file_that_is_not_utf8_is_a_config_error(capsys, tmp_path):
    path = tmp_path / "latin1.toml"
    text = '[client]\nallowed_origins = ["https://caf\u00e9.example"]\n'
    path.write_bytes(text.encode("latin-1"))
    code, out, err = run(capsys, "check-config", str(path))
    assert code == 2 and out == ""
    offset = text.index("\u00e9")
    assert f"livegate: config error: {path}: not UTF-8 text (byte 0xe9 at offset {offset})" in err
    assert "Traceback" not in err


def test_a_directory_given_as_the_config_is_a_config_error(capsys, tmp_path):
    (tmp_path / "conf.d").mkdir()
    code, out, err = run(capsys, "check-config", "conf.d")
    assert code == 2 and out == ""
    assert "livegate: config error: cannot read config file conf.d: it is a directory, not a file" in err
    code, _, err = run(capsys, "token", "--user", "alice", "--config", str(tmp_path))
    assert code == 2 and "it is a directory" in err


def test_a_toml_syntax_error_is_a_config_error_with_its_line(capsys, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[client]\nping_interval = 25s\n')  # a duration is a string: "25s"
    code, out, err = run(capsys, "check-config", str(path))
    assert code == 2 and out == ""
    (line,) = [line for line in err.splitlines() if "config error" in line]
    assert line.startswith(f"livegate: config error: {path}: invalid TOML: ") and "line 2" in line, line


def test_check_config_refuses_two_different_files(capsys, tmp_path):
    code, _, err = run(capsys, "check-config", "a.toml", "--config", "b.toml")
    assert code == 2 and "a.toml" in err and "b.toml" in err


def test_check_config_warnings_go_to_stderr_and_exit_0(capsys):
    code, out, err = run(capsys, "check-config", str(ROOT / "config.toml"))
    assert code == 0
    assert "livegate: warning" not in out
    lines = [line for line in err.splitlines() if line.startswith("livegate: warning: ")]
    keys = [line.split(": ")[2] for line in lines]
    assert {"client.token.hmac_secret_key", "http_api.key", "admin.password", "http_server.demo"} <= set(keys)
    assert out.strip().endswith(f"ok ({len(lines)} warnings)")


# -- genconfig -------------------------------------------------------------------------------


def secrets_of(text: str) -> list[str]:
    raw = tomllib.loads(text)
    return [raw["client"]["token"]["hmac_secret_key"], raw["http_api"]["key"], raw["admin"]["password"]]


@pytest.mark.parametrize("engine", ["redis", "memory"])
def test_genconfig_writes_a_private_file_that_checks_clean(capsys, tmp_path, engine):
    code, out, err = run(capsys, "genconfig", "--engine", engine)
    assert code == 0, err
    path = tmp_path / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "wrote config.toml" in err
    config = load_config(path, environ={})
    assert config.engine.type == engine
    assert not config.http_server.demo and not config.admin.enabled
    # The one warning left is the operator's to settle: which sites may connect.
    assert [key for key, _ in warnings(config)] == ["client.allowed_origins"]
    code, out, err = run(capsys, "check-config")
    assert code == 0, err
    assert out == "./config.toml: ok (1 warning)\n"
    assert "error" not in err


def test_genconfig_secrets_are_fresh_and_long(capsys):
    code, out1, _ = run(capsys, "genconfig", "-")
    code2, out2, _ = run(capsys, "genconfig", "-")
    assert code == code2 == 0
    one, two = secrets_of(out1), secrets_of(out2)
    assert len(set(one + two)) == 6  # no secret repeats, within a file or across runs
    assert all(len(s.encode()) >= 32 for s in one + two)


def test_genconfig_to_stdout_writes_no_file(capsys, tmp_path):
    code, out, _ = run(capsys, "genconfig", "-")
    assert code == 0 and list(tmp_path.iterdir()) == []
    parse_config(tomllib.loads(out), environ={})


def test_genconfig_refuses_to_overwrite_unless_forced(capsys, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("# my config\n")
    path.chmod(0o644)
    code, out, err = run(capsys, "genconfig", str(path))
    assert code == 2
    assert f"{path} exists" in err and "--force" in err
    assert path.read_text() == "# my config\n"
    code, _, err = run(capsys, "genconfig", str(path), "--force")
    assert code == 0, err
    assert "hmac_secret_key" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_genconfig_force_that_fails_keeps_the_old_file(capsys, tmp_path, monkeypatch):
    """--force writes a new file beside the old one and renames it over: a write that fails
    part-way (here: fsync says the disk is full) leaves the old file as it was, and no debris."""
    path = tmp_path / "mine.toml"
    path.write_text("# my config\n")
    path.chmod(0o644)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run(capsys, "genconfig", str(path), "--force")
    assert code == 1 and "cannot write" in err and "No space left" in err
    assert path.read_text() == "# my config\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.toml"]
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, _, err = run(capsys, "genconfig", "mine.toml", "--force")
    assert code == 0, err
    assert "hmac_secret_key" in path.read_text() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.toml"]


def test_genconfig_force_replaces_a_symlink_not_its_target(capsys, tmp_path):
    target = tmp_path / "shared.toml"
    target.write_text("# someone else's file\n")
    target.chmod(0o644)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    code, _, err = run(capsys, "genconfig")
    assert code == 2 and "exists" in err  # a link is a file that exists
    code, _, err = run(capsys, "genconfig", "--force")
    assert code == 0, err
    assert not link.is_symlink() and "hmac_secret_key" in link.read_text()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert target.read_text() == "# someone else's file\n" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_genconfig_force_keeps_the_owner_and_group_where_permitted(capsys, tmp_path, monkeypatch):
    """The replaced file's uid and gid go to the new one (as root: a service's file stays the
    service's); where the uid may not be set, the gid alone is tried."""
    path = tmp_path / "svc.toml"
    path.write_text("# the service's\n")
    old = path.stat()
    calls: list[tuple[int, int]] = []
    real_fchown = os.fchown

    def fchown(fd: int, uid: int, gid: int) -> None:
        calls.append((uid, gid))
        if uid != -1:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_fchown(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", fchown)
    code, _, err = run(capsys, "genconfig", str(path), "--force")
    assert code == 0, err
    assert calls == [(old.st_uid, old.st_gid), (-1, old.st_gid)]
    new = path.stat()
    assert (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid) and new.st_ino != old.st_ino
    calls.clear()
    run(capsys, "genconfig", str(tmp_path / "fresh.toml"), "--force")
    assert calls == []  # nothing replaced: the caller's own


def test_genconfig_that_fails_leaves_no_partial_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    code, _, err = run(capsys, "genconfig", "new.toml")
    assert code == 1 and "cannot write new.toml" in err
    assert list(tmp_path.iterdir()) == []


def test_genconfig_has_a_comment_on_every_section():
    from livegate.genconfig import render

    for engine in ("redis", "memory"):
        lines = render(engine).splitlines()  # type: ignore[arg-type]
        headers = [i for i, line in enumerate(lines) if line.startswith("[")]
        assert headers
        for i in headers:
            assert lines[i - 1].startswith("#"), lines[i]


# -- warnings, one by one --------------------------------------------------------------------

GOOD = {
    "client": {"allowed_origins": ["https://app.example.com"], "token": {"hmac_secret_key": "k" * 43}},
    "http_api": {"key": "a" * 43},
}


def warned(override: dict[str, Any]) -> dict[str, str]:
    """The warnings of GOOD with ``override`` merged in, by key."""
    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return dict(warnings(parse_config(merge(GOOD, override), environ={})))


def test_a_good_config_has_no_warning():
    assert warned({}) == {}


def test_every_secret_of_the_repository_config_is_flagged_as_a_demo_value():
    raw = tomllib.loads((ROOT / "config.toml").read_text())
    found = dict(warnings(parse_config(raw, environ={})))
    for key in ("client.token.hmac_secret_key", "http_api.key", "admin.password"):
        assert "demo value" in found[key]
    assert raw["client"]["token"]["hmac_secret_key"] in DEMO_SECRETS


@pytest.mark.parametrize("key, override", [
    ("client.token.hmac_secret_key", {"client": {"token": {"hmac_secret_key": "my-secret-change-me-" + "x" * 20}}}),
    ("client.subscription_token.hmac_secret_key",
     {"client": {"subscription_token": {"enabled": True, "hmac_secret_key": "CHANGEME" * 5}}}),
    ("http_api.key", {"http_api": {"key": "demo-api-key-change-me"}}),
    ("admin.password", {"admin": {"enabled": True, "password": "a-long-random-password"}}),
    ("admin.secret", {"admin": {"secret": "change-me-" * 4}}),
])
def test_demo_secrets(key, override):
    assert "demo value" in warned(override)[key]


def test_short_hmac_secret():
    found = warned({"client": {"token": {"hmac_secret_key": "x" * 31}}})
    assert found["client.token.hmac_secret_key"].startswith("is 31 bytes")
    assert "client.token.hmac_secret_key" not in warned({"client": {"token": {"hmac_secret_key": "x" * 32}}})
    # The subscription section's key counts only while that section is in use.
    short_sub = {"client": {"subscription_token": {"hmac_secret_key": "s" * 10}}}
    assert "client.subscription_token.hmac_secret_key" not in warned(short_sub)
    short_sub["client"]["subscription_token"]["enabled"] = True
    assert "is 10 bytes" in warned(short_sub)["client.subscription_token.hmac_secret_key"]


def test_demo_page():
    assert "anyone who asks" in warned({"http_server": {"demo": True}})["http_server.demo"]


def test_client_insecure():
    assert "without a token" in warned({"client": {"insecure": True}})["client.insecure"]


def test_empty_allowed_origins_says_what_browsers_get():
    why = warned({"client": {"allowed_origins": []}})["client.allowed_origins"]
    assert why.startswith("is empty") and "same origin" in why


@pytest.mark.parametrize("pattern, admits", [
    ("*", "https://evil.invalid"),
    ("https://*", "https://evil.invalid"),
    ("http://*:1234", "http://evil.invalid:1234"),
    ("HTTP*://EVIL*", "https://evil.invalid"),
    ("null", "null"),
    ("https://app.example.com*", "https://app.example.com.evil.invalid"),  # meant: any port
    ("https://app.example.*", "https://app.example.evil.invalid"),
    ("https://*example.com", "https://evilexample.com"),
    ("*example.com", "https://evilexample.com"),
    ("https://*.com", "https://evil.com"),
])
def test_allowed_origins_that_admit_other_sites(pattern, admits):
    why = warned({"client": {"allowed_origins": ["https://app.example.com", pattern]}})["client.allowed_origins"]
    assert why.startswith(f"{pattern!r} admits {admits!r}: pages of other web sites may connect"), why
    # What the warning says is what the server does.
    assert origin_allowed(admits, None, [pattern]) and not origin_allowed(admits, None, ["https://app.example.com"])


@pytest.mark.parametrize("pattern", [
    "https://app.example.com", "https://*.example.com", "https://app.example.com:*", "http://localhost:*",
    "http://127.0.0.1:*", "https://*-staging.example.com", "*://app.example.com", "http*://*.example.com",
    "https://[ab]pp.example.com"])
def test_allowed_origins_that_pin_the_site_down(pattern):
    assert warned({"client": {"allowed_origins": [pattern]}}) == {}


def test_every_loose_origin_pattern_is_named():
    why = warned({"client": {"allowed_origins": ["*", "https://ok.example.com", "https://a.example.com*"]}})
    assert why["client.allowed_origins"].startswith(
        "'*' admits 'https://evil.invalid'; 'https://a.example.com*' admits 'https://a.example.com.evil.invalid':")


def test_origin_matching_agrees_with_the_server():
    """config_warnings restates the server's rule (it may not import the server): the two give
    the same answer for every pattern and origin tried here."""
    patterns = ["*", "https://*", "https://app.example.com", "HTTPS://App.Example.com", "https://*.example.com",
                "http://localhost:*", "null", "https://app.example.com*", "h?tp://[a-c]*", "*example.com", ""]
    origins = [*FOREIGN_ORIGINS, "https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "https://x.example.com",
               "http://localhost:8000", "https://evilexample.com", "http://b.example", "https://app.example.com:8443"]
    for pattern in patterns:
        for origin in origins:
            assert origin_matches(origin, pattern) == origin_allowed(origin, None, [pattern]), (pattern, origin)
        probe = foreign_origin(pattern)
        assert probe is None or origin_allowed(probe, None, [pattern])


def test_api_key_empty_short_and_insecure():
    assert "refuses every request" in warned({"http_api": {"key": ""}})["http_api.key"]
    assert warned({"http_api": {"key": "short"}})["http_api.key"].startswith("is 5 characters")
    found = warned({"http_api": {"key": "", "insecure": True}})
    assert "without a key" in found["http_api.insecure"] and "http_api.key" not in found


def test_admin_page():
    assert "stays off" in warned({"http_api": {"key": ""}, "admin": {"enabled": True}})["admin.enabled"]
    assert warned({"admin": {"enabled": True, "password": "hunter2"}})["admin.password"].startswith("is 7 characters")
    assert warned({"admin": {"enabled": True, "password": "p" * 20}}) == {}
    assert warned({"admin": {"enabled": False, "password": "hunter2"}}) == {}  # the page is off
    assert warned({"admin": {"enabled": True}}) == {}  # the API key logs in: as strong as the key


def test_subscribe_for_client_without_user_limited_channels():
    ns = {"name": "chat", "allow_subscribe_for_client": True}
    found = warned({"channel": {"namespaces": [ns]}})
    assert "'chat:room#alice' is open to all" in found["channel.namespaces[0].allow_subscribe_for_client"]
    assert warned({"channel": {"namespaces": [{**ns, "allow_user_limited_channels": True}]}}) == {}
    # No user boundary: no "#" channels to misread.
    assert warned({"channel": {"user_boundary": "", "namespaces": [ns]}}) == {}
    found = warned({"channel": {"without_namespace": {"allow_subscribe_for_client": True,
                                                      "allow_subscribe_for_anonymous": True}}})
    why = found["channel.without_namespace.allow_subscribe_for_client"]
    assert "anonymous ones included" in why and "'room#alice'" in why


@pytest.mark.parametrize("action", ["publish", "presence", "history"])
def test_client_wide_actions_reach_private_and_user_channels(action):
    ns = {"name": "feed", f"allow_{action}_for_client": True}
    why = warned({"channel": {"namespaces": [ns]}})[f"channel.namespaces[0].allow_{action}_for_client"]
    assert "'$feed:room'" in why and "'feed:room#alice'" in why and "any user" in why
    # Granted to subscribers only, the subscribe rules (private: token only) hold.
    assert warned({"channel": {"namespaces": [{"name": "feed", f"allow_{action}_for_subscriber": True}]}}) == {}
    # Without a private prefix and a user boundary there is nothing of that kind to reach.
    assert warned({"channel": {"private_prefix": "", "user_boundary": "", "namespaces": [ns]}}) == {}
    found = warned({"channel": {"without_namespace": {f"allow_{action}_for_client": True,
                                                      f"allow_{action}_for_anonymous": True},
                                "user_boundary": ""}})
    why = found[f"channel.without_namespace.allow_{action}_for_client"]
    assert "anonymous ones included" in why and "'$room'" in why and "#" not in why


def test_check_config_warns_when_the_api_shares_the_client_port():
    from livegate.config import parse_config
    from livegate.config_warnings import warnings

    config = parse_config({"http_server": {"port": 9000}, "http_api": {"port": 9000}}, environ={})
    assert any(key == "http_api.port" and "/metrics" in why for key, why in warnings(config))
    assert not any(key == "http_api.port" for key, _ in warnings(parse_config({}, environ={})))
