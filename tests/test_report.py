"""``otel-audit report``: the verdict, coverage, activity and failed attempts of a period, on real trails."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import psycopg
import pytest

from otel_audit.core.keys import load_trusted_keys
from otel_audit.report import ReportOptions, build_report, render_html
from otel_audit.witness import DirectoryWitness
from tests.harness import App
from tests.test_checkpoints import Keys, anchored_app, make_keys, tamper
from tests.test_output_escaping import FORGED, cli, stored

pytestmark = pytest.mark.storage

SEED = Path(__file__).with_name("seed_queries.sql")


def populate(app: App) -> None:
    """Alice reads, mallory fails 7 times and is denied twice, bob updates; one record stored flagged."""
    for i in range(5):
        app.log(**{"audit.actor.id": "alice", "audit.resource.id": f"patient-{i}", "session.id": "s-alice"})
    for i in range(7):
        app.log(**{"audit.actor.id": "mallory", "audit.result": "failure", "audit.action": "login", "n": i})
    for _ in range(2):
        app.log(**{"audit.actor.id": "mallory", "audit.result": "denied", "audit.action": "export"})
    app.log(**{"audit.actor.id": "bob", "audit.action": "update", "audit.changed_fields": ["dose"]})
    app.log(**{"audit.actor.id": "eve", "audit.result": "maybe"})


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def anchored(db: str, spool_dir: Path, keys: Keys, tmp_path: Path) -> dict:
    witness = tmp_path / "witness"
    app = anchored_app(db, spool_dir, keys, witness)
    populate(app)
    assert app.close()
    other = App(db, spool_dir / "2", service="pharmacy", signing_key=str(keys.private), witness_dir=witness)
    other.log(**{"audit.actor.id": "carol"})
    assert other.close()
    return {"dsn": db, "keys": keys, "witness": witness, "records": 17}


def parse(page: str) -> tuple[set[str], set[str]]:
    """Every tag and attribute name of the page, as a browser's parser sees them."""
    tags: set[str] = set()
    attributes: set[str] = set()

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            tags.add(tag)
            attributes.update(name for name, _ in attrs)

    Collector().feed(page)
    return tags, attributes


def options(trail: dict, **kw) -> ReportOptions:
    return ReportOptions(
        trusted_keys=load_trusted_keys([trail["keys"].public]),
        trusted_key_files=[str(trail["keys"].public)],
        witnesses=[DirectoryWitness(trail["witness"], create=False)],
        witness_dirs=[str(trail["witness"])],
        **kw,
    )


def report_of(dsn: str, opts: ReportOptions) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return build_report(conn, opts)


def verify_json(trail: dict, *extra: str) -> tuple[int, dict]:
    result = cli(
        "verify",
        "--dsn",
        trail["dsn"],
        "--trusted-key",
        str(trail["keys"].public),
        "--witness",
        str(trail["witness"]),
        "--json",
        *extra,
    )
    return result.returncode, json.loads(result.stdout)


def test_the_report_of_a_clean_anchored_trail(anchored: dict) -> None:
    report = report_of(anchored["dsn"], options(anchored))
    v = report["verification"]
    code, verified = verify_json(anchored)
    assert code == 0 and v["exit_code"] == 0 and v["verdict"] == "INTACT" and v["ok"] is True
    assert (v["errors"], v["warnings"], v["records"]) == (verified["errors"], verified["warnings"], verified["records"])
    assert v["checks"] == verified["checks"]  # every check that ran, named as verify names them
    assert v["trusted_keys"] == [anchored["keys"].key_id] and v["signatures_checked"] is True
    assert v["witnesses"] == [f"witness directory {anchored['witness']}"]
    assert [(f["kind"], f.get("chain_id"), f.get("seq")) for f in v["findings"]] == [
        (f["kind"], f.get("chain_id"), f.get("seq")) for f in verified["findings"]
    ]

    coverage = report["coverage"]
    assert coverage["chains_active"] == 2 and {s["service"] for s in coverage["services"]} == {"billing", "pharmacy"}
    assert all(c["closed"] is True and c["unanchored"] == 0 for c in coverage["chains"])
    assert sum(c["records_in_period"] for c in coverage["chains"]) == anchored["records"]

    activity = report["activity"]
    assert activity["records"] == anchored["records"]
    assert activity["by_result"] == {"success": 7, "failure": 7, "denied": 2, "other": 1}
    assert sum(b["success"] + b["failure"] + b["denied"] + b["other"] for b in activity["buckets"]) == 17
    assert activity["top_actors"][0]["actor_id"] == "mallory" and activity["top_actors"][0]["records"] == 9
    assert report["problems"]["records"] == 1 and report["problems"]["sample"][0]["actor_id"] == "eve"
    assert {s["key_id"] for s in report["checkpoints"]["signers"]} == {anchored["keys"].key_id}


def test_failed_attempts_above_the_threshold_are_the_seeds_query(anchored: dict) -> None:
    # The seed's third query, run unchanged (last 24 hours, more than 5), against the report of the same 24 hours.
    seed_sql = SEED.read_text().split(";")[2]
    rows = stored(anchored["dsn"], seed_sql)
    until = datetime.now(timezone.utc) + timedelta(seconds=1)
    report = report_of(anchored["dsn"], options(anchored, since=until - timedelta(hours=24), until=until))
    failures = report["failed_attempts"]
    assert failures["threshold"] == 5
    assert [(a["actor_id"], a["failed_attempts"]) for a in failures["actors"]] == [(r[0], r[1]) for r in rows]
    assert rows == [("mallory", 9, rows[0][2])]
    # ... and the SQL the report shows for its period gives the same answer.
    assert [(r[0], r[1]) for r in stored(anchored["dsn"], failures["sql"])] == [("mallory", 9)]
    lower = report_of(anchored["dsn"], options(anchored, since=until - timedelta(hours=1), until=until, threshold=0))
    assert {a["actor_id"] for a in lower["failed_attempts"]["actors"]} == {"mallory", "eve"} - {"eve"}


def test_the_report_of_a_tampered_trail(anchored: dict) -> None:
    dsn = anchored["dsn"]
    tamper(
        dsn,
        "UPDATE audit_logs SET actor_id = 'someone-else' WHERE actor_id = 'bob'",
        "DELETE FROM audit_logs WHERE actor_id = 'alice' AND resource_id = 'patient-2'",
    )
    report = report_of(dsn, options(anchored))
    code, verified = verify_json(anchored)
    v = report["verification"]
    assert code == 1 and v["exit_code"] == 1 and v["ok"] is False and v["verdict"] == "INTEGRITY FAILURE"
    assert (v["errors"], v["warnings"]) == (verified["errors"], verified["warnings"])
    found = sorted((f["kind"], f.get("chain_id"), f.get("seq")) for f in v["findings"])
    assert found == sorted((f["kind"], f.get("chain_id"), f.get("seq")) for f in verified["findings"])
    assert {"modified", "missing"} <= {kind for kind, _, _ in found}
    assert all(f.get("chain_id") and f.get("seq") for f in v["findings"] if f["severity"] == "error")
    gaps = report["coverage"]["gaps"]
    assert [g["kind"] for g in gaps] == ["missing"]
    broken = [c for c in report["coverage"]["chains"] if c["errors"]]
    assert len(broken) == 1 and broken[0]["service"] == "billing"

    html = render_html(report)
    assert 'data-verdict="failure"' in html and "INTEGRITY FAILURE" in html
    for kind, chain, seq in found:
        seq_attr = "" if seq is None else seq
        assert f'data-kind="{kind}" data-severity="' in html and f'data-chain="{chain}" data-seq="{seq_attr}"' in html

    result = cli(
        "report",
        "--dsn",
        dsn,
        "--trusted-key",
        str(anchored["keys"].public),
        "--witness",
        str(anchored["witness"]),
        "--format",
        "json",
    )
    assert result.returncode == 1 and json.loads(result.stdout)["verification"]["verdict"] == "INTEGRITY FAILURE"


def test_the_period_selects_activity_and_verification_covers_everything(anchored: dict) -> None:
    past = report_of(
        anchored["dsn"],
        options(
            anchored, since=datetime(2020, 1, 1, tzinfo=timezone.utc), until=datetime(2020, 1, 2, tzinfo=timezone.utc)
        ),
    )
    assert past["activity"]["records"] == 0 and past["coverage"]["chains_active"] == 0
    assert past["verification"]["records"] == anchored["records"]  # the verdict is always of the whole trail
    assert past["period"]["bucket"] == "hour" and len(past["activity"]["buckets"]) == 24
    html = render_html(past)
    assert "no records in this period" in html


def test_without_trusted_keys_the_report_says_what_that_means(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    populate(app)
    assert app.close()
    report = report_of(db, ReportOptions())
    assert report["verification"]["signatures_checked"] is False and report["verification"]["trusted_keys"] is None
    html = render_html(report)
    assert "No trusted key was given" in html
    soc2 = next(c for c in report["controls"] if c["control"] == "CC7.2")
    assert any("NOT checked" in e for e in soc2["evidence"])


def test_the_page_is_self_contained_and_escapes_stored_values(db: str, spool_dir: Path, tmp_path: Path) -> None:
    app = App(db, spool_dir, service="<script>alert(1)</script>")
    app.log(**{"audit.actor.id": FORGED, "audit.result": "denied", "session.id": "s-1"})
    app.log(
        **{
            "audit.actor.id": '"><img src=x onerror=alert(1)>',
            "audit.resource.id": "http://attacker.example/x",
            "session.id": "s-1",
        }
    )
    assert app.close()
    out = tmp_path / "report.html"
    result = cli("report", "--dsn", db, "--out", str(out), "--session", "s-1", "--threshold", "0")
    assert result.returncode == 0, result.stderr
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page
    tags, attributes = parse(page)
    assert {"script", "img", "link", "iframe", "object", "embed", "a", "form", "image", "use"}.isdisjoint(tags)
    assert {"src", "href", "xlink:href", "action", "srcset", "poster", "data", "background"}.isdisjoint(attributes)
    assert not any(a.startswith("on") for a in attributes)  # no event handler attribute
    assert "default-src 'none'" in page
    assert "url(" not in page and "@import" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\u202e" not in page and "\x1b" not in page and "\\u202e" in page and "\\x1b" in page
    assert 'data-timeline="session:s-1"' in page
    assert len(re.findall(r'<svg class="chart"', page)) == 6


def test_report_usage_errors(db: str, empty_db: str, tmp_path: Path) -> None:
    for args in (
        ["--since", "nope"],
        ["--since", "2026-12-02", "--until", "2026-12-01"],
        ["--threshold", "-1"],
        ["--trace", "xyz"],
        ["--witness", str(tmp_path)],
        ["--format", "pdf"],
    ):
        result = cli("report", "--dsn", db, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
    missing = cli("report", "--dsn", empty_db)
    assert missing.returncode == 2 and "otel-audit db init" in missing.stderr
    nothing = cli("report", "--dsn", db, "--out", str(tmp_path / "empty.html"))
    assert nothing.returncode == 0 and "0 records" in nothing.stderr
    assert (tmp_path / "empty.html").read_text().count('<svg class="chart"') == 6


def test_the_default_period_takes_in_the_records_just_written(db: str, spool_dir: Path) -> None:
    from otel_audit.cli.main import build_parser
    from otel_audit.cli.report import _report_options

    app = App(db, spool_dir)
    app.log(**{"audit.result": "denied"})
    assert app.close()
    opts = _report_options(build_parser().parse_args(["report", "--dsn", db]))
    ((written,),) = stored(db, "SELECT timestamp FROM audit_logs")
    assert opts.since <= written < opts.until  # the end (excluded) is now rounded up, never down
    assert opts.until.microsecond == 0 and opts.until - opts.since == timedelta(days=30)
    report = report_of(db, opts)
    assert report["activity"]["records"] == 1 and report["failed_attempts"]["threshold"] == 5
