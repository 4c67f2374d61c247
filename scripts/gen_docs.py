"""Generate the reference pages of docs/ from the code, so that they cannot drift from it.

    python scripts/gen_docs.py            # write docs/reference/config.md and docs/reference/server-api.md
    python scripts/gen_docs.py --check    # exit 1 when either page differs from what would be written

``docs/reference/config.md`` comes from the pydantic models of ``livegate/config.py`` (key paths,
types, defaults, environment variables) and ``docs/config-keys.toml`` (the Centrifugo v6 name and
one sentence per key). ``docs/reference/server-api.md`` comes from
``livegate.server.http_api.openapi_document()`` (what ``/api/openapi.json`` serves) and
``docs/api-methods.toml`` (what each method does and returns). A model key, API method or request
field without text, or text for one that does not exist, is an error: ``tests/unit/test_docs.py``
runs the same checks and fails when a committed page is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from annotated_types import Ge, Gt, Le, Lt  # noqa: E402
from pydantic import BaseModel, BeforeValidator  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from livegate.config import ENV_PREFIX, ChannelOptions, Config, Namespace, _env_path, parse_duration, parse_rate  # noqa: E402

DOCS = ROOT / "docs"
CONFIG_KEYS = DOCS / "config-keys.toml"
API_METHODS = DOCS / "api-methods.toml"
CONFIG_PAGE = DOCS / "reference" / "config.md"
API_PAGE = DOCS / "reference" / "server-api.md"
OPERATIONS_PAGE = DOCS / "operations.md"

#: What ``centrifugo`` says in config-keys.toml for a key Centrifugo v6 does not have.
LIVEGATE_ONLY = "-"
NAMESPACES = "channel.namespaces"
WITHOUT_NAMESPACE = "channel.without_namespace"


class DocsError(Exception):
    """The code and the data files disagree (a key without text, text for no key, ...)."""


# -- the configuration reference -----------------------------------------------------------


@dataclass(frozen=True)
class Key:
    path: str      # "client.token.hmac_secret_key"; namespace options: "channel.namespaces[].presence"
    section: str   # the heading it is listed under
    type: str
    default: str
    env: str
    secret: bool = False  # declared with repr=False in livegate/config.py: its value is never shown


def _is_secret(field: FieldInfo) -> bool:
    return field.repr is False


def _validator(field: FieldInfo) -> Any:
    for meta in field.metadata:
        if isinstance(meta, BeforeValidator):
            return meta.func
    return None


def _duration_text(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _type(field: FieldInfo) -> str:
    ann = field.annotation
    validator = _validator(field)
    if validator is parse_duration:
        return "duration"
    if validator is parse_rate:
        return "rate"
    if get_origin(ann) is Literal:
        values = [f"`{v}`" for v in get_args(ann)]
        return "one of " + ", ".join(values)
    if get_origin(ann) is list:
        (item,) = get_args(ann)
        if get_origin(item) is Literal:
            return "list, each one of " + ", ".join(f"`{v}`" for v in get_args(item))
        return "list of strings" if item is str else "list of tables"
    if ann is bool:
        return "bool"
    if ann is str:
        return "string"
    if ann is int:
        low = high = None
        for meta in field.metadata:
            if isinstance(meta, Gt):
                low = int(meta.gt) + 1  # type: ignore[call-overload]
            elif isinstance(meta, Ge):
                low = int(meta.ge)  # type: ignore[call-overload]
            elif isinstance(meta, Le):
                high = int(meta.le)  # type: ignore[call-overload]
            elif isinstance(meta, Lt):
                high = int(meta.lt) - 1  # type: ignore[call-overload]
        if low is not None and high is not None:
            return f"integer {low}–{high}"
        if low is not None:
            return f"integer ≥ {low}"
        return "integer"
    raise DocsError(f"no rendering for the type {ann!r}: teach scripts/gen_docs.py")


def _default(field: FieldInfo, value: Any) -> str:
    if _is_secret(field):  # never printed (the defaults are empty anyway)
        return '`""`' if value == "" else "(secret, not shown)"
    validator = _validator(field)
    if validator is parse_duration:
        return f'`"{_duration_text(value)}"`'
    if validator is parse_rate:
        if not value:
            return "`0` (off)"
        rate = int(value) if value == int(value) else value
        return f'`"{rate}/s"`'
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int | float):
        return f"`{value}`"
    if isinstance(value, str | list):
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    raise DocsError(f"no rendering for the default {value!r}")


def _env(path: list[str]) -> str:
    """The variable that sets ``path``, checked against the parser that reads it (load_config)."""
    name = "_".join(path).upper()
    if _env_path(Config, name) != path:
        raise DocsError(f"{'.'.join(path)}: {ENV_PREFIX}{name} does not reach this key")
    return f"`{ENV_PREFIX}{name}`"


def _model_of(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _namespace_keys() -> list[Key]:
    """The options of a namespace, once (its name first): the same keys make up
    channel.without_namespace, where each also has a variable of its own."""
    example = Namespace(name="example")
    section = f"{NAMESPACES}[]"
    fields = Namespace.model_fields
    keys = [Key(f"{section}.name", section, _type(fields["name"]), "(required)", "—", _is_secret(fields["name"]))]
    for name, field in fields.items():
        if name == "name":
            continue
        assert name in ChannelOptions.model_fields, name
        sub = _model_of(field.annotation)
        if sub is not None:  # a table of options (map): its keys one by one
            keys.append(Key(f"{section}.{name}", section, "table", "every option off", "—"))
            inner = getattr(example, name)
            for sub_name, sub_field in sub.model_fields.items():
                env = _env(["channel", "without_namespace", name, sub_name]) + " (without_namespace)"
                keys.append(Key(f"{section}.{name}.{sub_name}", section, _type(sub_field),
                                _default(sub_field, getattr(inner, sub_name)), env, _is_secret(sub_field)))
            continue
        env = _env(["channel", "without_namespace", name]) + " (without_namespace)"
        keys.append(Key(f"{section}.{name}", section, _type(field), _default(field, getattr(example, name)), env,
                        _is_secret(field)))
    return keys


def config_keys(config: Config | None = None) -> list[Key]:
    """Every key of config.toml, in the order of the models, grouped under section headings:
    a top-level table, or a table inside one (deeper tables stay with their parent's). The
    defaults are read from ``config`` (the built-in defaults when None)."""
    keys: list[Key] = []

    def walk(model: type[BaseModel], instance: BaseModel, path: list[str]) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            here = [*path, key]
            dotted = ".".join(here)
            section = ".".join(path[:2])
            value = getattr(instance, name)
            sub = _model_of(field.annotation)
            if dotted == WITHOUT_NAMESPACE:
                keys.append(Key(dotted, section, "table of channel options", "every option off",
                                f"`{ENV_PREFIX}CHANNEL_WITHOUT_NAMESPACE_<OPTION>`"))
            elif dotted == NAMESPACES:
                keys.append(Key(dotted, section, "list of tables", "`[]`", _env(here) + " (a JSON list)"))
                keys.extend(_namespace_keys())
            elif sub is not None:
                walk(sub, value, here)
            else:
                keys.append(Key(dotted, section, _type(field), _default(field, value), _env(here), _is_secret(field)))

    walk(Config, Config() if config is None else config, [])
    return keys


def _load(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def _cell(text: str, where: str) -> str:
    text = " ".join(text.split())
    if "|" in text:
        raise DocsError(f"{where}: a table cell cannot hold '|'")
    return text


def check_config_keys(keys: list[Key], data: dict[str, Any]) -> list[str]:
    """Problems: model keys without text, text for keys or sections that do not exist."""
    problems = []
    texts = data.get("keys", {})
    sections = data.get("sections", {})
    known = {k.path for k in keys}
    known_sections = {k.section for k in keys}
    for k in keys:
        entry = texts.get(k.path)
        if entry is None:
            problems.append(f"{k.path}: no entry in docs/config-keys.toml")
        elif set(entry) != {"centrifugo", "text"} or not all(isinstance(v, str) and v for v in entry.values()):
            problems.append(f"{k.path}: the entry must be {{centrifugo = \"...\", text = \"...\"}}, both non-empty")
    for path in texts:
        if path not in known:
            problems.append(f"{path}: docs/config-keys.toml describes a key that the config does not have")
    for name in known_sections:
        if name not in sections:
            problems.append(f"[sections] {name}: no text in docs/config-keys.toml")
    for name in sections:
        if name not in known_sections:
            problems.append(f"[sections] {name}: not a section of the config")
    return problems


CONFIG_INTRO = """\
# Configuration reference

<!-- Generated by scripts/gen_docs.py from livegate/config.py and docs/config-keys.toml. Do not edit:
     change the text in docs/config-keys.toml and run `make docs` (or python scripts/gen_docs.py). -->

Every key of `config.toml`, with its type, its default, the environment variable that sets it
and its name in Centrifugo v6 ("livegate only" where Centrifugo has no such key). The file is
TOML; every key has a default, and an unknown key, a wrong type or an impossible combination
stops the server with an error that names the key (`livegate check-config FILE` checks a file
without starting anything). The commands find their file as the
[command line reference](cli.md#which-config-file) says.

- **Environment.** Any key can be set as `LIVEGATE_<PATH>`: the path upper-cased, dots turned
  into `_`. A variable wins over the file. Lists are written as JSON
  (`LIVEGATE_CLIENT_ALLOWED_ORIGINS='["https://app.example.com"]'`); namespaces can only be
  given as a whole, as a JSON list in `LIVEGATE_CHANNEL_NAMESPACES`.
- **Durations** are strings such as `"250ms"`, `"25s"`, `"5m"`, `"1h30m"`, `"720h"`, or numbers
  of seconds.
- **Rates** are strings such as `"100/s"`, `"600/m"`, `"5000/h"`, or numbers per second; `0`
  turns the limit off.
- **Secrets** ({secrets}) are never logged; their defaults are empty.
"""


def _wrap_bullet(text: str, width: int = 96) -> str:
    """``text`` with its last bullet (the generated secrets list) wrapped at ``width``."""
    head, sep, last = text.rstrip("\n").rpartition("\n- ")
    lines: list[str] = []
    for word in last.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width - 2:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return head + sep + "\n  ".join(lines) + "\n"


def render_config(keys: list[Key], data: dict[str, Any]) -> str:
    problems = check_config_keys(keys, data)
    if problems:
        raise DocsError("\n".join(problems))
    texts, sections = data["keys"], data["sections"]
    grouped: dict[str, list[Key]] = {}
    for k in keys:
        grouped.setdefault(k.section, []).append(k)
    secrets = [f"`{k.path}`" for k in keys if k.secret]
    if not secrets:
        raise DocsError("no key is declared secret (repr=False) in livegate/config.py")
    listed = ", ".join(secrets[:-1]) + f" and {secrets[-1]}" if len(secrets) > 1 else secrets[0]
    out = [_wrap_bullet(CONFIG_INTRO.format(secrets=listed))]
    for section, rows in grouped.items():
        level = "##" if "." not in section else "###"
        out.append(f"\n{level} `{section}`\n\n{' '.join(sections[section].split())}\n")
        out.append("| key | type | default | environment | Centrifugo v6 | meaning |")
        out.append("|---|---|---|---|---|---|")
        out += [_config_row(k, texts[k.path]) for k in rows]
    return "\n".join(out) + "\n"


def _config_row(k: Key, entry: dict[str, str]) -> str:
    centrifugo = entry["centrifugo"]
    centrifugo = "livegate only" if centrifugo == LIVEGATE_ONLY else ", ".join(
        f"`{c.strip()}`" for c in centrifugo.split(","))
    return (f"| `{k.path}` | {k.type} | {k.default} | {k.env} | {_cell(centrifugo, k.path)} "
            f"| {_cell(entry['text'], k.path)} |")


# -- the server API reference ----------------------------------------------------------------


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) != len(schema["anyOf"])
        text = " or ".join(_schema_type(s) for s in options)
        return f"{text} or null" if nullable else text
    kind = schema.get("type")
    if kind is None:
        return "any JSON"
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        below = schema.get("exclusiveMaximum")
        if low == 0 and below == 1 << 64:
            return "integer (uint64)"
        if low == -(1 << 63) and below == 1 << 63:
            return "integer (int64)"
        if low is not None and high is not None:
            return f"integer {low}–{high}"
        return "integer"
    if kind == "string":
        return f"string (at most {schema['maxLength']} characters)" if "maxLength" in schema else "string"
    if kind == "boolean":
        return "bool"
    if kind == "array":
        item = _schema_type(schema.get("items", {}))
        return "list of " + {"string": "strings", "object": "objects"}.get(item, item)
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("type") == "string":
            return "object of strings"
        return "object"
    raise DocsError(f"no rendering for the schema {schema!r}: teach scripts/gen_docs.py")


def _schema_default(schema: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in schema:
        return "—"
    return f"`{json.dumps(schema['default'])}`"


def _field_table(schema: dict[str, Any], fields: dict[str, str], where: str) -> list[str]:
    properties = schema.get("properties", {})
    if not properties:
        return ["No fields: send `{}`."]
    required = set(schema.get("required", []))
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, prop in properties.items():
        rows.append(f"| `{name}` | {_schema_type(prop)} | {_schema_default(prop, name in required)} "
                    f"| {_cell(fields[name], f'{where}.{name}')} |")
    return rows


def _referenced(schemas: dict[str, Any], name: str, seen: list[str]) -> None:
    """The nested types a request uses, depth first, each once."""
    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target = ref.rsplit("/", 1)[-1]
                if target not in seen:
                    seen.append(target)
                    _referenced(schemas, target, seen)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schemas[name].get("properties", {}))


def check_api_methods(doc: dict[str, Any], data: dict[str, Any]) -> list[str]:
    problems = []
    schemas = doc["components"]["schemas"]
    methods = data.get("methods", {})
    types = data.get("types", {})
    seen_types: list[str] = []
    names = []
    for item in doc["paths"].values():
        op = item["post"]
        method = op["operationId"]
        names.append(method)
        entry = methods.get(method)
        model = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        _referenced(schemas, model, seen_types)
        if entry is None:
            problems.append(f"{method}: no [methods.{method}] in docs/api-methods.toml")
            continue
        for required in ("text", "result", "errors", "fields"):
            if required not in entry:
                problems.append(f"{method}: [methods.{method}] has no {required}")
        fields = entry.get("fields", {})
        properties = schemas[model].get("properties", {})
        for name in properties:
            if name not in fields:
                problems.append(f"{method}.{name}: a request field without text in docs/api-methods.toml")
        for name in fields:
            if name not in properties:
                problems.append(f"{method}.{name}: docs/api-methods.toml describes a field the request does not have")
    for method in methods:
        if method not in names:
            problems.append(f"{method}: docs/api-methods.toml describes a method the API does not have")
    for name in seen_types:
        fields = types.get(name, {}).get("fields")
        if fields is None:
            problems.append(f"[types.{name}]: no text in docs/api-methods.toml")
            continue
        properties = schemas[name].get("properties", {})
        problems += [f"{name}.{f}: a field without text" for f in properties if f not in fields]
        problems += [f"{name}.{f}: text for a field the type does not have" for f in fields if f not in properties]
    for name in types:
        if name not in seen_types:
            problems.append(f"[types.{name}]: not a type of the API")
    return problems


API_INTRO = """\
# Server API reference

<!-- Generated by scripts/gen_docs.py from livegate.server.http_api.openapi_document() (the
     document served at /api/openapi.json) and docs/api-methods.toml. Do not edit: change the
     text in docs/api-methods.toml and run `make docs` (or python scripts/gen_docs.py). -->

The server API is how your backend acts on livegate: publish, disconnect a user, read presence
and history. It speaks Centrifugo's v5/v6 HTTP API, so the `cent` Python client and Centrifugo's
other server SDKs work unchanged. It listens on the API port (`[http_api]`, default
`127.0.0.1:8001`), which is for your backends only: never expose it to browsers. The same
commands reach livegate through the Redis API stream and the PostgreSQL outbox (see
[Concepts](../concepts.md#publishing-doors)), with the same request bodies. The OpenAPI 3.1
document is served at `GET /api/openapi.json` (without a key); this page is generated from the
same pydantic models that validate every request, so neither can drift from the code.

## Calling it

`POST /api/<method>` with a JSON object as body (`Content-Type: application/json`). The older
form, `POST /api` with `{{"method": "...", "params": {{...}}}}`, works too. Unknown fields are ignored,
as Centrifugo does; a field of the wrong type is error 107 with a message that names it.

{auth}

A call that ran answers HTTP 200 with `{{"result": {{...}}}}`, or, when the command failed, HTTP 200
with `{{"error": {{"code": C, "message": "..."}}}}`. Other answers:

| status | when |
|---|---|
{statuses}
| 404 | an unknown method |
| 415 | a POST body not declared as JSON (`application/json`, or `application/octet-stream`) |

Error codes in `error.code` (Centrifugo's):

| code | meaning | what to do |
|---|---|---|
| 100 | internal error, e.g. the engine (Redis) cannot be reached | temporary: retry with backoff |
| 102 | unknown channel: no namespace of that name | fix the channel name or add the namespace |
| 104 | not found: an unknown method inside a batch | fix the method name |
| 107 | bad request: a missing or wrong field, data that the namespace refuses, too large a publication | fix the request; the message names the field |
| 108 | not available: the namespace has no presence or no history | enable it in the namespace |
| 112 | unrecoverable position: `since.epoch` is not the channel's epoch any more | read from the start, or resubscribe |
"""


def render_api(doc: dict[str, Any], data: dict[str, Any]) -> str:
    problems = check_api_methods(doc, data)
    if problems:
        raise DocsError("\n".join(problems))
    schemes = doc["components"]["securitySchemes"]
    headers = [f"`{s['name']}: {'apikey ' if s['name'] == 'Authorization' else ''}<key>`" for s in schemes.values()]
    auth = (f"**Authentication**: the key of `http_api.key`, in the header {' or '.join(headers)} "
            "(or `?api_key=<key>`, which ends up in logs: prefer a header). With no key configured every "
            "call is refused with 401 unless `http_api.insecure = true`; with the admin page on, an admin "
            "session token (`Authorization: token <t>`) counts as the key.")
    first = next(iter(doc["paths"].values()))["post"]["responses"]
    statuses = "\n".join(f"| {code} | {_cell(r['description'], code)} |"
                         for code, r in first.items() if code != "200")
    out = [API_INTRO.format(auth=auth, statuses=statuses)]
    schemas = doc["components"]["schemas"]
    methods, types = data["methods"], data["types"]
    out.append("## Methods\n")
    seen_types: list[str] = []
    for path, item in doc["paths"].items():
        op = item["post"]
        method = op["operationId"]
        entry = methods[method]
        model = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        _referenced(schemas, model, seen_types)
        out.append(f"### {method}\n")
        out.append(f"`POST {path}`: {' '.join(entry['text'].split())}\n")
        out.append(f"**Request** (`{model}`):\n")
        out += _field_table(schemas[model], entry["fields"], method)
        out.append(f"\n**Result**: {' '.join(entry['result'].split())}\n")
        errors = entry["errors"]
        out.append("**Errors**: " + (", ".join(f"`{c}`" for c in errors) if errors else "none of its own")
                   + " (and 100 when the engine is unreachable).\n")
    out.append("## Types\n")
    out.append("The objects that requests nest.\n")
    for name in sorted(seen_types):
        out.append(f"### {name}\n")
        text = types[name].get("text")
        if text:
            out.append(" ".join(text.split()) + "\n")
        out += _field_table(schemas[name], types[name]["fields"], name)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# -- what the tests read from the pages ---------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A Python block of docs/ marked ``<!-- test: run [app=MODULE:ATTR] -->`` (run it against a
    server) or ``<!-- test: file NAME -->`` (write it to NAME for the others to use)."""

    page: str      # relative to docs/
    line: int      # 1-based line of the marker
    kind: str      # "run" or "file"
    name: str      # the file name of a "file" block
    app: str       # the --app of a "run" block ("" for none)
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


_MARKER = re.compile(r"<!--\s*test:(.*?)-->")


def examples(docs: Path = DOCS) -> list[Example]:
    """Every marked block of every page, in page order. A malformed marker is an error."""
    found = []
    for page in sorted(docs.rglob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        where = page.relative_to(docs).as_posix()
        for i, line in enumerate(lines):
            match = _MARKER.match(line.strip())  # a marker is a line of its own (prose may quote one)
            if match is None:
                continue
            at = f"{where}:{i + 1}"
            words = match.group(1).split()
            if line.strip() != match.group(0) or not words:
                raise DocsError(f"{at}: a test marker is a line of its own: <!-- test: run|file ... -->")
            if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
                raise DocsError(f"{at}: a test marker must be followed by a ```python block")
            end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise DocsError(f"{at}: the python block is not closed")
            code = "\n".join(lines[i + 2:end]) + "\n"
            kind, args = words[0], words[1:]
            if kind == "file" and len(args) == 1 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", args[0]):
                found.append(Example(where, i + 1, "file", args[0], "", code))
            elif kind == "run" and all(a.startswith("app=") and ":" in a for a in args) and len(args) <= 1:
                found.append(Example(where, i + 1, "run", "", args[0][4:] if args else "", code))
            else:
                raise DocsError(f"{at}: unknown marker {match.group(0)!r} (use 'run', 'run app=MODULE:ATTR' "
                                "or 'file NAME.py')")
    return found


_METRIC_ROW = re.compile(r"^\| `(livegate_[a-z0-9_]+)` \| (gauge|counter|histogram) \| ([^|]*) \|")


def documented_metrics(page: Path = OPERATIONS_PAGE) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metric table of the operations page: name -> (type, label names)."""
    metrics = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        match = _METRIC_ROW.match(line)
        if match is None:
            continue
        name, kind, labels = match.groups()
        if name in metrics:
            raise DocsError(f"{page.name}: {name} is listed twice")
        metrics[name] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)))
    return metrics


def exposed_metrics(text: str) -> dict[str, tuple[str, set[str]]]:
    """Families of a Prometheus text exposition: name -> (type, label names seen on samples,
    without a histogram's ``le``)."""
    families: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = (kind, set())
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        sample, _, rest = line.partition("{")
        labels = {pair.split("=", 1)[0] for pair in re.findall(r'([a-zA-Z_]+="(?:[^"\\]|\\.)*")', rest)} - {"le"}
        for suffix in ("_bucket", "_count", "_sum", ""):
            base = sample[: -len(suffix)] if suffix and sample.endswith(suffix) else sample
            if base in families:
                families[base][1].update(labels)
                break
    return families


# -- entry point --------------------------------------------------------------------------------


def pages() -> dict[Path, str]:
    """Every generated page and its text."""
    from livegate.server.http_api import openapi_document

    return {
        CONFIG_PAGE: render_config(config_keys(), _load(CONFIG_KEYS)),
        API_PAGE: render_api(openapi_document(), _load(API_METHODS)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is stale instead of writing it")
    args = parser.parse_args(argv)
    try:
        generated = pages()
    except DocsError as exc:
        print(f"gen_docs: {exc}", file=sys.stderr)
        return 1
    stale = []
    for path, text in generated.items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"gen_docs: wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print("gen_docs: stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + " (run python scripts/gen_docs.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
