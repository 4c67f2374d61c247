"""`make compat`: Centrifugo v6 compatibility, measured by an SDK's own test suite, unchanged.

    python scripts/compat.py                  # the whole suite
    python scripts/compat.py -- -k TestPubSub # extra pytest arguments after --
    python scripts/compat.py --config other.toml --app ""   # another config, no app

What it does:

1. downloads the sdist of centrifuge-python at the version pinned in pyproject.toml's test extras
   (``pip download --no-deps --no-binary :all:``, into .tmp/compat/; kept for later runs) and
   unpacks it afresh into .tmp/compat/centrifuge_python-<version>/ (the sdist ships ``tests/``);
2. starts ``livegate serve --config compat/centrifuge-python.toml`` on
   127.0.0.1:8000, where the suite expects its Centrifugo (``ws://localhost:8000``, fixed in its
   code), after checking that nothing answers there; its log goes to .tmp/compat/livegate.log;
3. runs the suite with pytest from the unpacked directory (``-c compat/pytest.ini``): the
   ``centrifuge`` package imported is the sdist's own source, first on sys.path, the code the
   tests were written for; websockets and protobuf come from the venv;
4. prints the totals (a subtest is one result: the suite runs most scenarios for JSON and for
   Protobuf as ``subTest``s) and each failing test id with a one-line reason, stops the server,
   and exits 1 when anything failed (2 when the run could not be made).

Not part of `make test`: it downloads and takes a minute or more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".tmp" / "compat"
COMPAT = ROOT / "compat"
CONFIG = COMPAT / "centrifuge-python.toml"
PORT = 8000  # the suite's tests/centrifugo.py and every Client(...) in it: ws://localhost:8000
HEALTH = f"http://127.0.0.1:{PORT}/health"


class CompatError(Exception):
    """The run could not be made (no download, port taken, server did not start)."""


def pinned_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'"centrifuge-python==([0-9][0-9A-Za-z.]*)"', text)
    if not m:
        raise CompatError("pyproject.toml: no centrifuge-python==<version> pin in the test extras")
    return m.group(1)


def fetch_sdist(version: str) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    name = f"centrifuge_python-{version}.tar.gz"
    sdist = WORK / name
    if not sdist.exists():
        print(f"compat: downloading the centrifuge-python {version} sdist from PyPI", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"centrifuge-python=={version}", "-d", str(WORK)]
        if subprocess.run(cmd, check=False).returncode != 0 or not sdist.exists():
            raise CompatError(f"could not download centrifuge-python=={version} (sdist) from PyPI: {' '.join(cmd)}")
    tree = WORK / f"centrifuge_python-{version}"
    shutil.rmtree(tree, ignore_errors=True)  # always the pristine sdist: the suite unchanged
    with tarfile.open(sdist) as tar:
        tar.extractall(WORK, filter="data")
    if not (tree / "tests").is_dir() or not (tree / "centrifuge").is_dir():
        raise CompatError(f"{sdist.name}: no tests/ or centrifuge/ in the sdist")
    return tree


def port_taken() -> str:
    """Who answers on the suite's port, on either address `localhost` may resolve to."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex((host, PORT)) == 0:
                    return host
        except OSError:
            continue  # no IPv6 here
    return ""


def start_server(log_path: Path, config: Path, app: str) -> subprocess.Popen[bytes]:
    taken = port_taken()
    if taken:
        raise CompatError(
            f"port {PORT} is taken ({taken}:{PORT} accepts connections): the centrifuge-python suite "
            f"dials ws://localhost:{PORT} (fixed in its code, no variable to change it); stop what "
            f"listens there (ss -ltnp 'sport = :{PORT}') and run make compat again")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEGATE_")}  # the config file alone
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(COMPAT), os.environ.get("PYTHONPATH", "")) if p)
    log = open(log_path, "wb")  # noqa: SIM115 - the server's stdout and stderr, for its lifetime
    cmd = [sys.executable, "-m", "livegate.cli", "serve", "--config", str(config)] + (["--app", app] if app else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        wait_healthy(proc, log_path)
    except BaseException:
        stop_server(proc)  # also on Ctrl-C: no server left behind
        raise
    return proc


def wait_healthy(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise CompatError(f"livegate serve exited with {proc.returncode} before it was healthy; "
                              f"its log ({log_path}):\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(HEALTH, timeout=1) as resp:
                if resp.status == 200 and proc.poll() is None:  # ours answers: the port was free
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise CompatError(f"livegate serve was not healthy at {HEALTH} within 30 s; its log:\n{tail(log_path)}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_suite(tree: Path, extra: list[str], report_path: Path) -> int:
    report_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LIVEGATE_"))}
    env["LIVEGATE_COMPAT_REPORT"] = str(report_path)
    env["PYTHONPATH"] = str(COMPAT)  # the report plugin; the SDK comes from the sdist (cwd, rootdir)
    cmd = [sys.executable, "-m", "pytest", "-c", str(COMPAT / "pytest.ini"), "--rootdir", str(tree),
           "-p", "pytest_compat_report", "-p", "no:cacheprovider", "-q", "--tb=short", "tests", *extra]
    print(f"compat: {' '.join(cmd[1:])}  (in {tree.relative_to(ROOT)})", flush=True)
    return subprocess.run(cmd, cwd=tree, env=env, check=False).returncode


def summarize(report_path: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, str]]:
    data = json.loads(report_path.read_text(encoding="utf-8"))
    results = data["results"]
    with_subtests = {r["nodeid"] for r in results if r["subtest"]}
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failing: list[tuple[str, str]] = []
    for r in results:
        if r["nodeid"] in with_subtests and not r["subtest"] and r["outcome"] == "passed":
            continue  # counted through its subtests
        outcome = r["outcome"]
        key = "errors" if outcome == "error" else outcome
        totals[key] = totals.get(key, 0) + 1
        if outcome in ("failed", "error"):
            where = f" {r['subtest']}" if r["subtest"] else ""
            when = f" [{r['when']}]" if r["when"] not in ("call",) else ""
            failing.append((f"{r['nodeid']}{where}{when}", r["reason"]))
    return totals, failing, {"module": data["centrifuge_module"], "version": data["centrifuge_version"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="livegate config (default: %(default)s)")
    parser.add_argument("--app", default="",
                        help="MODULE:ATTR for livegate serve --app, compat/ on its path; '' for none (default: %(default)s)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    try:
        version = pinned_version()
        tree = fetch_sdist(version)
        log_path = WORK / "livegate.log"
        proc = start_server(log_path, args.config.resolve(), args.app)
    except CompatError as exc:
        print(f"make compat: {exc}", file=sys.stderr)
        return 2
    report_path = WORK / "report.json"
    started = time.monotonic()
    try:
        rc = run_suite(tree, args.pytest_args, report_path)
    finally:
        alive = proc.poll() is None
        stop_server(proc)
    elapsed = time.monotonic() - started
    if not alive:
        print(f"make compat: livegate serve died during the run; its log ({log_path}):\n{tail(log_path)}",
              file=sys.stderr)
    if not report_path.exists():
        print(f"make compat: pytest exited with {rc} and wrote no report", file=sys.stderr)
        return 2
    totals, failing, sdk = summarize(report_path)
    print()
    print(f"centrifuge-python {sdk['version']} suite (the sdist's tests and its centrifuge package: "
          f"{Path(sdk['module']).parent}) against livegate ({args.config}, app {args.app or 'none'}), "
          f"{elapsed:.0f} s:")
    print(f"  {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped, "
          f"{totals['errors']} errors (a subtest is one result); server log: {log_path.relative_to(ROOT)}")
    for test_id, reason in failing:
        print(f"  FAILED {test_id}: {reason or '(no message)'}")
    if (failing or rc != 0 or not alive) and rc not in (0, 1):
        print(f"make compat: pytest exited with {rc}", file=sys.stderr)
    return 1 if failing or rc != 0 or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
