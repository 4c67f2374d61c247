"""The documentation site (docs/, mkdocs.yml) against the code: the generated reference pages
are complete and current, the metric table covers every metric family, the example markers
parse, and ``mkdocs build --strict`` passes. The examples themselves run in
tests/integration/test_docs_examples.py."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from pydantic import BaseModel, Field

from livegate.config import Config, parse_config
from livegate.server.http_api import openapi_document
from livegate.server.lifecycle import Server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_docs  # noqa: E402


@pytest.fixture(scope="module")
def keys() -> list[gen_docs.Key]:
    return gen_docs.config_keys()


@pytest.fixture(scope="module")
def key_texts() -> dict:
    return gen_docs._load(gen_docs.CONFIG_KEYS)


@pytest.fixture(scope="module")
def api_texts() -> dict:
    return gen_docs._load(gen_docs.API_METHODS)


def test_every_config_key_has_text_and_every_text_a_key(keys, key_texts):
    assert gen_docs.check_config_keys(keys, key_texts) == []
    paths = {k.path for k in keys}
    # Spot checks that the walk reaches nested tables, namespace options and aliases.
    assert {"client.token.hmac_secret_key", "client.rate_limit.user.total.burst", "persistence.schema",
            "channel.namespaces[].name", "channel.namespaces[].archive", "channel.without_namespace"} <= paths


def test_the_config_key_check_catches_a_missing_and_an_unknown_key(keys, key_texts):
    broken = copy.deepcopy(key_texts)
    del broken["keys"]["http_server.port"]
    broken["keys"]["http_server.no_such_key"] = {"centrifugo": "-", "text": "Nothing."}
    del broken["sections"]["admin"]
    problems = gen_docs.check_config_keys(keys, broken)
    assert any(p.startswith("http_server.port: no entry") for p in problems), problems
    assert any(p.startswith("http_server.no_such_key:") for p in problems), problems
    assert any(p.startswith("[sections] admin:") for p in problems), problems
    with pytest.raises(gen_docs.DocsError):
        gen_docs.render_config(keys, broken)


def _another_value(k: gen_docs.Key, current: object) -> tuple[str, object]:
    """A valid value for key ``k`` other than ``current``: (as the environment writes it, as parsed)."""
    if k.type == "bool":
        return ("false" if current else "true"), not current
    if k.type == "duration":
        return f"{int(current) + 1}s", int(current) + 1
    if k.type == "rate":
        return "7/s", 7.0
    if k.type.startswith("integer"):
        return str(current + 1), current + 1
    if k.type.startswith("one of"):
        other = next(v for v in re.findall(r"`([^`]+)`", k.type) if v != current)
        return other, other
    if k.type == "list of strings":
        return '["redis://docs.example:6379/0"]', ["redis://docs.example:6379/0"]
    if k.type == "string":
        value = "docs_x" if k.path.endswith("schema") else "/docs-x"
        return value, value
    raise AssertionError(f"{k.path}: no test value for {k.type}")


def test_each_listed_variable_sets_its_key(keys):
    """Every key's variable, as the reference page writes it, changes that key and no other
    (through load_config's parser). Namespace options are set as a JSON list and skipped."""
    base_env = {"LIVEGATE_ENGINE_TYPE": "redis"}  # http_server.workers > 1 needs it
    base = parse_config({}, environ=base_env)

    def value_at(config: object, path: str) -> object:
        for part in path.split("."):
            config = getattr(config, "schema_name" if part == "schema" else part)
        return config

    checked = 0
    for k in keys:
        if not k.env.startswith("`LIVEGATE_") or "<" in k.env or "(" in k.env:
            continue
        name = k.env.strip("`")
        raw, expected = _another_value(k, value_at(base, k.path))
        config = parse_config({}, environ={**base_env, name: raw})
        assert value_at(config, k.path) == expected, f"{name}={raw} did not set {k.path}"
        changed = {other.path for other in keys if "[]" not in other.path and other.path != "channel.without_namespace"
                   and value_at(config, other.path) != value_at(base, other.path)}
        # A rate limit table replaces its default as a whole: the other of rate and burst becomes 0
        # (burst 0: one second's worth; rate 0: off), as the reference page says.
        bucket = k.path.rsplit(".", 1)[0]
        allowed = {k.path, f"{bucket}.rate", f"{bucket}.burst"} if k.path.endswith((".rate", ".burst")) else {k.path}
        assert k.path in changed and changed <= allowed, f"{name} changed {changed}"
        checked += 1
    assert checked > 100


def _secret_paths(model: type[BaseModel] = Config, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of the models declared secret (``repr=False``), found here independently of
    gen_docs' own walk."""
    found = []
    for name, field in model.model_fields.items():
        here = (*path, field.alias or name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found += _secret_paths(sub, here)
        elif field.repr is False:
            found.append(here)
    return found


def test_secrets_are_never_printed(key_texts):
    """The page rendered from a config whose every secret is set to a sentinel shows none of
    them, and lists every secret key as such; a non-secret value set alongside does show, so
    the page is indeed rendered from that config."""
    secret = Field(default="", repr=False)
    assert gen_docs._default(secret, "") == '`""`'
    assert gen_docs._default(secret, "s3cret") == "(secret, not shown)"

    paths = _secret_paths()
    assert {"client.token.hmac_secret_key", "client.subscription_token.hmac_secret_key", "http_api.key",
            "persistence.dsn", "admin.password", "admin.secret"} <= {".".join(p) for p in paths}
    raw: dict = {}
    sentinels = {}
    for path in [*paths, ("client", "token", "issuer")]:
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = sentinels[".".join(path)] = f"SENTINEL-{'-'.join(path)}-{'x' * 32}"
    page = gen_docs.render_config(gen_docs.config_keys(parse_config(raw, environ={})), key_texts)
    assert sentinels.pop("client.token.issuer") in page  # a non-secret value shows
    secrets_line = " ".join(page[page.index("- **Secrets**"):].split("\n\n")[0].split())
    for path, value in sentinels.items():
        assert value not in page, f"{path}: its value is printed"
        assert f"| `{path}` | string | (secret, not shown) |" in page, f"{path}: its row does not hide it"
        assert f"`{path}`" in secrets_line, f"{path}: not in the list of secrets"


def test_every_api_method_and_field_has_text(api_texts):
    doc = openapi_document()
    assert gen_docs.check_api_methods(doc, api_texts) == []
    broken = copy.deepcopy(api_texts)
    del broken["methods"]["publish"]["fields"]["tags"]
    broken["methods"]["history"]["fields"]["nonsense"] = "No such field."
    del broken["methods"]["info"]
    broken["types"]["Imaginary"] = {"fields": {}}
    problems = gen_docs.check_api_methods(doc, broken)
    for expected in ("publish.tags:", "history.nonsense:", "info: no [methods.info]", "[types.Imaginary]:"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_the_generated_pages_are_current():
    stale = [path.relative_to(ROOT).as_posix() for path, text in gen_docs.pages().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    assert not stale, f"stale generated pages {stale}: run `python scripts/gen_docs.py` (or make docs) and commit them"


def test_the_server_api_page_lists_every_method():
    page = gen_docs.API_PAGE.read_text(encoding="utf-8")
    for path, item in openapi_document()["paths"].items():
        assert f"### {item['post']['operationId']}\n" in page
        assert f"`POST {path}`" in page


def test_every_metric_family_is_in_the_operations_table():
    """The families of /metrics, built by the collector the server registers (in-process, not
    started), against the table of docs/operations.md: same names, same types."""
    server = Server(parse_config({}, environ={}))
    exposed = gen_docs.exposed_metrics(generate_latest(server.metrics_registry).decode())
    documented = gen_docs.documented_metrics()
    assert exposed, "no metric families exposed"
    undocumented = sorted(set(exposed) - set(documented))
    assert not undocumented, f"metric families missing from docs/operations.md: {undocumented}"
    gone = sorted(set(documented) - set(exposed))
    assert not gone, f"docs/operations.md lists metrics that /metrics does not have: {gone}"
    wrong = {name: (kind, documented[name][0]) for name, (kind, _) in exposed.items() if documented[name][0] != kind}
    assert not wrong, f"metric types differ (exposed, documented): {wrong}"


def test_the_metric_table_parser_reads_rows_and_labels(tmp_path):
    page = tmp_path / "ops.md"
    page.write_text("| `livegate_x_total` | counter | `a`, `b` | X. |\n| `livegate_y` | gauge | — | Y. |\n")
    assert gen_docs.documented_metrics(page) == {"livegate_x_total": ("counter", ("a", "b")),
                                                 "livegate_y": ("gauge", ())}
    text = ('# TYPE livegate_h_seconds histogram\nlivegate_h_seconds_bucket{method="p",le="0.5"} 1.0\n'
            '# TYPE livegate_c_total counter\nlivegate_c_total{code="3008"} 2.0\n')
    assert gen_docs.exposed_metrics(text) == {"livegate_h_seconds": ("histogram", {"method"}),
                                              "livegate_c_total": ("counter", {"code"})}


def test_example_markers_parse_and_the_required_examples_exist():
    found = gen_docs.examples()
    runs = [e for e in found if e.kind == "run"]
    files = {e.name for e in found if e.kind == "file"}
    assert len(files) == len([e for e in found if e.kind == "file"]), "two example files with one name"
    for e in runs:
        if e.app:
            assert f"{e.app.split(':')[0]}.py" in files, f"{e.id}: app={e.app} but no `file` block writes its module"
    assert any("centrifuge" in e.code and ".publish(" in e.code for e in runs), "a centrifuge-python example"
    assert any("/api" in e.code and "publish" in e.code for e in runs), "an HTTP API publish example"
    assert any(e.app for e in runs), "an embedding-API example"
    assert any("jwt.encode" in e.code for e in runs), "a token example"


def test_a_malformed_marker_is_an_error(tmp_path):
    (tmp_path / "page.md").write_text("<!-- test: runn -->\n```python\nprint(1)\n```\n")
    with pytest.raises(gen_docs.DocsError, match="unknown marker"):
        gen_docs.examples(tmp_path)
    (tmp_path / "page.md").write_text("<!-- test: run -->\n```sh\necho 1\n```\n")
    with pytest.raises(gen_docs.DocsError, match="python block"):
        gen_docs.examples(tmp_path)


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "-d", str(site)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_mkdocs_build_strict_passes(tmp_path):
    built = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0 and "WARNING" not in built.stderr, built.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()
    assert not list((tmp_path / "site").rglob("*.toml")), "the data files are not pages"


def test_mkdocs_strict_fails_on_a_broken_anchor(tmp_path):
    """The build settings catch what rots: a link to an anchor that does not exist."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "concepts.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [nothing](security.md#no-such-heading).\n",
                    encoding="utf-8")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("docs_dir: docs", f"docs_dir: {docs}"),
                      encoding="utf-8")
    built = _mkdocs(config, tmp_path / "site")
    assert built.returncode != 0 and "no-such-heading" in built.stderr, built.stderr
