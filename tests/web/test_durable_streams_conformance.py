"""The Durable Streams conformance suite (npm ``@durable-streams/server-conformance-tests``,
tests/node/durable_streams/) against a live reviewstream server on a real uvicorn and a real
redis-server.

Every test of the suite is compared with expected_failures.json in that folder (each entry with
its reason): a failure outside the list fails this test; a listed test that now passes is
reported (in the output, and by ``DURABLE_STREAMS_EXPECTED=write``, which rewrites the list from
this run) so that the list only shrinks. The per-group table beside the reference server's
(REFERENCE.md, reference.json) is printed on every run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reviewstream.settings import Settings
from reviewstream.web import create_app, server_options

from tests.support import node
from tests.support.live import tuned
from tests.support.servers import serve

SUITE_SECONDS = 600.0  # the whole suite, against a server that may hang on some tests
# An empty long poll answers within this: the suite's "offset=now" long polls wait for one
# inside its 15 s per-test bound (REFERENCE.md), as the reference runs at 500 ms.
LONG_POLL_SECONDS = 1.0
UNLISTED_REASON = "fails on reviewstream: reason to be written"


@dataclass(frozen=True)
class Outcome:
    id: str  # the suite's describe titles and the test's own, joined by " > "
    group: str  # the suite's top-level describe
    status: str  # passed | failed | skipped
    message: str  # the first line of the failure, if any


def outcomes(report: dict[str, Any]) -> list[Outcome]:
    """Each test of vitest's JSON report, as tests/node/durable_streams/results.mjs reads it."""
    found = []
    for file in report["testResults"]:
        for a in file["assertionResults"]:
            status = a["status"] if a["status"] in ("passed", "failed") else "skipped"
            messages = a.get("failureMessages") or [""]
            found.append(
                Outcome(
                    id=" > ".join([*a["ancestorTitles"], a["title"]]),
                    group=a["ancestorTitles"][0] if a["ancestorTitles"] else "(top level)",
                    status=status,
                    message=(messages[0].strip().splitlines() or [""])[0],
                )
            )
    return found


def table(ours: list[Outcome], reference: dict[str, str]) -> str:
    """group | reviewstream passed/failed/skipped | reference passed/failed/skipped."""
    groups: dict[str, list[list[int]]] = {}
    statuses = ("passed", "failed", "skipped")
    for t in ours:
        groups.setdefault(t.group, [[0, 0, 0], [0, 0, 0]])[0][statuses.index(t.status)] += 1
    for test_id, status in reference.items():
        group = test_id.split(" > ", 1)[0]
        groups.setdefault(group, [[0, 0, 0], [0, 0, 0]])[1][statuses.index(status)] += 1
    rows = [
        "| group | reviewstream p / f / s | reference p / f / s |",
        "|---|---|---|",
    ]
    total = [[0, 0, 0], [0, 0, 0]]
    for group, (mine, theirs) in groups.items():
        rows.append(f"| {group} | {' / '.join(map(str, mine))} | {' / '.join(map(str, theirs))} |")
        for side, counts in zip(total, (mine, theirs), strict=True):
            for i, n in enumerate(counts):
                side[i] += n
    rows.append(f"| total | {' / '.join(map(str, total[0]))} | {' / '.join(map(str, total[1]))} |")
    return "\n".join(rows)


def listing(title: str, names: Iterable[str]) -> str:
    names = list(names)
    return f"{title} ({len(names)}):\n" + "\n".join(f"  - {n}" for n in names) if names else ""


def rewrite_expected(path: Path, expected: dict[str, Any], ours: list[Outcome]) -> None:
    """The list as this run found it: the failures, with their old reasons where listed."""
    old = expected["failures"]
    expected["failures"] = {
        t.id: old.get(t.id, UNLISTED_REASON) for t in ours if t.status == "failed"
    }
    path.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")


def announce(config: pytest.Config, text: str) -> None:
    """Print past pytest's capture: what a passing run has to say (the table, the tests that
    left the list)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in text.splitlines():
            reporter.write_line(line)


@pytest.mark.timeout(SUITE_SECONDS + 60)
async def test_the_conformance_suite_fails_only_its_listed_tests(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    suite = node.folder("durable_streams")
    expected_path = suite / "expected_failures.json"
    expected = json.loads(expected_path.read_text())
    reference: dict[str, str] = json.loads((suite / "reference.json").read_text())["tests"]
    s = tuned(settings, long_poll_max_timeout=LONG_POLL_SECONDS)
    report_path = tmp_path / "report.json"
    async with serve(create_app(s), **server_options(s)) as base:
        run = await node.run(
            suite,
            [
                "node_modules/vitest/vitest.mjs", "run", "--reporter=json",
                f"--outputFile={report_path}",
            ],
            {"DURABLE_STREAMS_URL": base},
            SUITE_SECONDS,
        )  # fmt: skip
    assert report_path.exists(), f"vitest wrote no report\n{run.explain()}"
    ours = outcomes(json.loads(report_path.read_text()))
    assert ours, f"vitest ran no tests\n{run.explain()}"
    listed: dict[str, str] = expected["failures"]
    seen = {t.id for t in ours}
    unexpected = [t for t in ours if t.status == "failed" and t.id not in listed]
    left_the_list = [t.id for t in ours if t.status == "passed" and t.id in listed]
    stale = [name for name in listed if name not in seen]

    if os.environ.get("DURABLE_STREAMS_EXPECTED") == "write":
        rewrite_expected(expected_path, expected, ours)
    summary = "\n\n".join(
        filter(
            None,
            [
                "Durable Streams conformance (tests/node/durable_streams/):",
                table(ours, reference),
                listing(
                    "Listed in expected_failures.json but passing now: take them off the list",
                    left_the_list,
                ),
                listing("Listed in expected_failures.json but not in the suite", stale),
            ],
        )
    )
    announce(request.config, summary)
    if unexpected:
        failed = (f"{t.id}\n      {t.message}" for t in unexpected)
        pytest.fail(
            f"{listing('Failed, and not in expected_failures.json', failed)}\n\n{summary}",
            pytrace=False,
        )
