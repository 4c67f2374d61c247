"""pytest plugin for `make compat` (loaded with ``-p pytest_compat_report``): records every test
and subtest result of the SDK's suite, with a one-line reason for each failure, as JSON in the
file named by ``LIVEGATE_COMPAT_REPORT``; scripts/compat.py reads it for the totals.

A subtest (unittest's ``self.subTest(...)``, run by pytest's own subtests support) is one
result; a test with subtests counts once more only when it fails outside them. Outcomes are
taken before pytest's terminal reporter marks a test failed for its failed subtests.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_results: list[dict[str, Any]] = []


def _reason(report: Any) -> str:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    context = getattr(report, "context", None)  # a SubtestReport's SubtestContext
    subtest = context is not None
    if report.when != "call" and report.passed:
        return
    if report.when != "call" and report.skipped and not subtest:
        kind = "skipped"  # skipped at setup (skipUnless, setUpClass raising SkipTest)
    elif report.when != "call":
        kind = "error"  # setup or teardown failed
    else:
        kind = report.outcome  # passed, failed, skipped
    description = ""
    if subtest:
        parts = [f"[{context.msg}]"] if context.msg is not None else []
        if context.kwargs:
            parts.append("(" + ", ".join(f"{k}={v}" for k, v in context.kwargs.items()) + ")")
        description = " ".join(parts) or "(<subtest>)"
    _results.append({
        "nodeid": report.nodeid,
        "subtest": description,
        "when": report.when,
        "outcome": kind,
        "reason": "" if kind == "passed" else _reason(report),
        "duration": round(report.duration, 3),
    })


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _results.append({"nodeid": report.nodeid, "subtest": "", "when": "collect", "outcome": "error",
                         "reason": _reason(report), "duration": 0.0})


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("LIVEGATE_COMPAT_REPORT")
    if not path:
        return
    import centrifuge
    from centrifuge.__meta__ import __version__

    with open(path, "w", encoding="utf-8") as f:
        json.dump({"centrifuge_module": centrifuge.__file__, "centrifuge_version": __version__,
                   "results": _results}, f, indent=1)
