"""The report opened in a real headless Chromium: it renders, shows the charts, logs no error, loads nothing,
and shows the verdict ``otel-audit verify --json`` gives, on a clean and on a tampered trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, ensure_chromium
from tests.test_checkpoints import tamper
from tests.test_output_escaping import cli
from tests.test_report import anchored, keys  # noqa: F401 (fixtures)

pytestmark = pytest.mark.storage

FINDINGS_JS = """JSON.stringify([...document.querySelectorAll('tr.finding')].map(r => [
    r.dataset.kind, r.dataset.severity, r.dataset.chain || null, r.dataset.seq === '' ? null : Number(r.dataset.seq)]))"""
CHARTS_JS = """JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => ({
    id: s.id, marks: s.querySelectorAll('rect, circle, polyline').length,
    width: s.getBoundingClientRect().width, height: s.getBoundingClientRect().height})))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable, why = ensure_chromium()
    if executable is None:
        pytest.skip(f"no headless browser: {why}")
    instance = Browser(executable)
    try:
        yield instance
    finally:
        instance.close()


def open_report(browser: Browser, trail: dict, tmp_path: Path, name: str) -> tuple[int, dict]:
    page = tmp_path / f"{name}.html"
    result = cli(
        "report",
        "--dsn",
        trail["dsn"],
        "--trusted-key",
        str(trail["keys"].public),
        "--witness",
        str(trail["witness"]),
        "--session",
        "s-alice",
        "--threshold",
        "5",
        "--out",
        str(page),
    )
    assert result.returncode in (0, 1), result.stderr
    browser.open(page.as_uri())
    verify = cli(
        "verify",
        "--dsn",
        trail["dsn"],
        "--trusted-key",
        str(trail["keys"].public),
        "--witness",
        str(trail["witness"]),
        "--json",
    )
    assert result.returncode == verify.returncode  # report and verify exit alike
    return verify.returncode, json.loads(verify.stdout)


def check_page(browser: Browser, page: Path, shot: Path, code: int, verified: dict) -> None:
    url = page.as_uri()
    assert browser.requests() == [url], f"the page made requests: {browser.requests()}"
    assert browser.console_errors() == []
    png = browser.screenshot(shot)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    charts = json.loads(browser.evaluate(CHARTS_JS))
    assert [c["id"] for c in charts] == [
        "chart-records",
        "chart-attempts",
        "chart-actors",
        "chart-resources",
        "chart-actions",
        "chart-failures",
    ]
    assert all(c["width"] > 300 and c["height"] > 40 for c in charts), charts
    assert all(c["marks"] > 0 for c in charts[:5]), charts  # bars, points and lines drawn
    verdict = browser.evaluate("JSON.stringify(document.getElementById('verdict').dataset)")
    shown = json.loads(verdict)
    assert shown["ok"] == str(verified["ok"]).lower()
    assert int(shown["exitCode"]) == code
    assert (int(shown["errors"]), int(shown["warnings"]), int(shown["records"])) == (
        verified["errors"],
        verified["warnings"],
        verified["records"],
    )
    text = browser.evaluate("document.getElementById('verdict').innerText")
    assert ("INTACT" if code == 0 else "INTEGRITY FAILURE") in text
    rows = [tuple(r) for r in json.loads(browser.evaluate(FINDINGS_JS))]
    expected = [(f["kind"], f["severity"], f.get("chain_id"), f.get("seq")) for f in verified["findings"]]
    assert sorted(rows, key=str) == sorted(expected, key=str)
    checks = browser.evaluate("[...document.querySelectorAll('#checks li')].map(li => li.innerText)")
    assert checks == verified["checks"]
    assert browser.evaluate("document.querySelectorAll('ol.timeline li').length") == 5  # alice's session


def test_a_clean_trail_in_the_browser(browser: Browser, anchored: dict, tmp_path: Path) -> None:
    code, verified = open_report(browser, anchored, tmp_path, "clean")
    assert code == 0 and verified["ok"] is True
    check_page(browser, tmp_path / "clean.html", tmp_path / "clean.png", code, verified)
    assert browser.evaluate("document.getElementById('verdict').dataset.verdict") == "intact"


def test_a_tampered_trail_in_the_browser(browser: Browser, anchored: dict, tmp_path: Path) -> None:
    tamper(
        anchored["dsn"],
        "UPDATE audit_logs SET result = 'success' WHERE actor_id = 'mallory' AND seq = 8",
        "DELETE FROM audit_logs WHERE actor_id = 'bob'",
    )
    code, verified = open_report(browser, anchored, tmp_path, "tampered")
    assert code == 1 and verified["ok"] is False and verified["errors"] >= 2
    check_page(browser, tmp_path / "tampered.html", tmp_path / "tampered.png", code, verified)
    assert browser.evaluate("document.getElementById('verdict').dataset.verdict") == "failure"
    kinds = browser.evaluate("[...document.querySelectorAll('tr.finding.error')].map(r => r.dataset.kind)")
    assert {"modified", "missing"} <= set(kinds)
