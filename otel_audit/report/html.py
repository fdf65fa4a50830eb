"""The report as one self-contained HTML page.

No network access is needed to open it, and none is possible: styles are
inline, charts are inline SVG drawn in Python (:mod:`otel_audit.report.svg`),
the page has no script at all, and its Content-Security-Policy
(``default-src 'none'``) forbids the browser to load anything, so even a
stored value that slipped through escaping could not make a request.

Every stored value (actor ids, resource ids, service names, finding details)
is shown with its non-printable characters as visible escapes (bidi
overrides cannot reorder the page) and HTML-escaped.

Elements carry ``data-`` attributes (``data-verdict``, ``data-kind``,
``data-chain``, ``data-seq``) so that tools and tests can read the page.
"""

from __future__ import annotations

import html as _html
from collections.abc import Mapping, Sequence
from typing import Any

from otel_audit.report import svg
from otel_audit.report.collect import MAX_FINDINGS
from otel_audit.report.controls import DISCLAIMER
from otel_audit.report.svg import Series, text

__all__ = ["render_html"]

COLORS = {"success": "#2e7d32", "failure": "#ef6c00", "denied": "#c62828", "other": "#757575"}

CSS = """
:root { --fg:#1b1f23; --muted:#586069; --line:#d0d7de; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; --bg2:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid var(--line);
padding-bottom: 4px; } h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: var(--muted); font-size: 13px; }
.verdict { border-radius: 8px; padding: 16px 20px; margin: 18px 0; color: #fff; }
.verdict.intact { background: var(--ok); } .verdict.failure { background: var(--bad); }
.verdict.warnings { background: var(--warn); }
.verdict .big { font-size: 26px; font-weight: 700; letter-spacing: .5px; }
.verdict .sub { opacity: .95; }
.caveat { border-left: 4px solid var(--warn); background: #fff8c5; padding: 8px 12px; margin: 10px 0; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: var(--bg2); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; } .nw { white-space: nowrap; } td.id { white-space: nowrap; font-family: ui-monospace, SFMono-Regular, Menlo,
  Consolas, monospace; font-size: 11px; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  overflow-wrap: anywhere; }
tr.error td:first-child { color: var(--bad); font-weight: 600; } tr.warning td:first-child { color: var(--warn);
font-weight: 600; } tr.info td:first-child { color: var(--muted); }
.pill { display:inline-block; padding: 0 6px; border-radius: 10px; font-size: 12px; background: var(--bg2);
  border: 1px solid var(--line); }
.pill.bad { background:#ffebe9; border-color:#ffcecb; color: var(--bad);} .pill.ok { background:#dafbe1;
  border-color:#aceebb; color: var(--ok);} .pill.warn { background:#fff8c5; border-color:#f5e0a0; color:var(--warn);}
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card .n { font-size: 20px; font-weight: 700; } .card .l { color: var(--muted); font-size: 12px; }
svg.chart { display: block; margin: 6px 0 14px; border: 1px solid var(--line); border-radius: 6px; }
svg .grid { stroke: #e5e7eb; } svg .axis { font-size: 11px; fill: #586069; }
svg .legend, svg .label, svg .value { font-size: 12px; fill: #1b1f23; } svg .empty { font-size: 14px; fill: #8c959f; }
svg .threshold { stroke: var(--bad); stroke-dasharray: 4 3; }
pre { background: var(--bg2); border: 1px solid var(--line); border-radius: 6px; padding: 10px; overflow-x: auto;
  white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; }
details > summary { cursor: pointer; color: #0969da; }
.timeline li { margin: 2px 0; } .timeline .t { color: var(--muted); font-family: ui-monospace, monospace;
  font-size: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { body { max-width: none; padding: 0; } details { display: block; } .verdict { -webkit-print-color-adjust:
  exact; print-color-adjust: exact; } h2 { break-after: avoid; } svg.chart, tr { break-inside: avoid; } }
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _n(value: Any) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else text(value)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric: Sequence[int] = (),
    mono: Sequence[int] = (),
    ids: Sequence[int] = (),
    row_attrs: Sequence[str] | None = None,
    empty: str = "none",
) -> str:
    if not rows:
        return f'<p class="meta">{_html.escape(empty)}</p>'
    head = "".join(
        f'<th class="num">{_html.escape(h)}</th>' if i in numeric else f"<th>{_html.escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        attrs = row_attrs[r] if row_attrs else ""
        cells = []
        for i, value in enumerate(row):
            cls = "num" if i in numeric else "mono" if i in mono else "id" if i in ids else ""
            cell = _n(value) if not isinstance(value, _Raw) else value.html
            cells.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


class _Raw:
    """Already-safe HTML for a table cell."""

    def __init__(self, html: str) -> None:
        self.html = html


def _label(bucket: str, start: str) -> str:
    if bucket == "hour":
        return start[5:13].replace("T", " ") + "h"
    return start[:10]


def render_html(report: Mapping[str, Any]) -> str:
    """The page (a ``str`` of HTML) for a report built by :func:`otel_audit.report.build_report`."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>Audit trail report {text(report['period']['since'][:10])} to {text(report['period']['until'][:10])}"
        "</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    parts += _header(report)
    parts += _verdict(report)
    parts += _coverage(report)
    parts += _activity(report)
    parts += _failures(report)
    parts += _problems(report)
    parts += _timelines(report)
    parts += _controls(report)
    parts += _commands(report)
    parts.append(
        f"<footer>Generated by {text(report['generator'])} at {text(report['generated_at'])} from one snapshot of the "
        f"database taken at {text(report['snapshot_at'])}. Report format {text(report['format'])}; the same data as "
        'JSON: <span class="mono">otel-audit report --format json</span>. This page loads nothing from the '
        "network and runs no script.</footer></body></html>"
    )
    return "\n".join(parts)


def _header(report: Mapping[str, Any]) -> list[str]:
    db = report["database"]
    period = report["period"]
    return [
        "<header><h1>Audit trail report</h1>",
        f'<div class="meta" id="period" data-since="{text(period["since"])}" data-until="{text(period["until"])}">'
        f"Period <b>{text(period['since'])}</b> to <b>{text(period['until'])}</b> (UTC, the end excluded) · "
        f'database <span class="mono">{text(db["database"])}</span> schema '
        f'<span class="mono">{text(db["schema"])}</span> on {text(db["host"])} ({text(db["server"])}, otel-audit '
        f"schema v{_n(db['schema_version'])}) · read as {text(db['user'])}</div></header>",
    ]


def _verdict(report: Mapping[str, Any]) -> list[str]:
    v = report["verification"]
    cls = "intact" if v["exit_code"] == 0 else "failure" if not v["ok"] else "warnings"
    state = "intact" if v["ok"] else "failure"
    out = [
        '<section id="verification"><h2>Verification</h2>',
        f'<div class="verdict {cls}" id="verdict" data-verdict="{state}" data-ok="{str(v["ok"]).lower()}" '
        f'data-exit-code="{v["exit_code"]}" data-errors="{v["errors"]}" data-warnings="{v["warnings"]}" '
        f'data-records="{v["records"]}">',
        f'<div class="big">{text(v["verdict"])}</div>',
        f'<div class="sub">{v["records"]:,} records in {v["chains_verified"]:,} chain(s) checked in '
        f"{v['duration_seconds']:.1f}s: {v['errors']:,} error(s), {v['warnings']:,} warning(s), {v['info']:,} "
        f'note(s). Same as <span class="mono">otel-audit verify</span> exit code {v["exit_code"]}'
        f"{' (--strict)' if v['strict'] else ''}.</div></div>",
        f"<p>Scope: {text(v['scope'])}. The activity and coverage below are for the period only.</p>",
    ]
    if v["signatures_checked"]:
        keys = ", ".join(f'<span class="mono">{text(k)}</span>' for k in v["trusted_keys"]) or "none"
        out.append(f"<p>Trusted keys (key ids): {keys}.</p>")
    else:
        out.append(
            '<p class="caveat"><b>No trusted key was given:</b> checkpoint signatures were not checked, so this '
            "verdict shows the trail is internally consistent, not that it is what the emitters wrote. Whoever "
            "controls the database could rewrite records and recompute every hash. Re-run with the emitters' "
            'public keys (<span class="mono">--trusted-key</span>) and a witness.</p>'
        )
    witnesses = "".join(f'<li class="mono">{text(w)}</li>' for w in v["witnesses"])
    out.append(f"<p>Witnesses compared: {'<ul>' + witnesses + '</ul>' if witnesses else 'none.'}</p>")
    checks = "".join(f"<li>{text(c)}</li>" for c in v["checks"])
    out.append(f'<h3>Checks that ran</h3><ul id="checks">{checks}</ul>')
    findings = v["findings"][:MAX_FINDINGS]
    out.append(f"<h3>Findings ({v['findings_total']:,})</h3>")
    if v["findings_total"] > len(findings):
        out.append(
            f'<p class="caveat">The first {len(findings):,} of {v["findings_total"]:,} findings are listed '
            '(errors first); <span class="mono">otel-audit verify --json</span> lists every one.</p>'
        )
    rows, attrs = [], []
    for f in findings:
        rows.append(
            [
                f["severity"].upper(),
                f["kind"],
                f.get("chain_id") or "database",
                f.get("seq"),
                f.get("count"),
                f["detail"],
            ]
        )
        attrs.append(
            f' class="finding {text(f["severity"])}" data-kind="{text(f["kind"])}" '
            f'data-severity="{text(f["severity"])}" data-chain="{text(f.get("chain_id") or "")}" '
            f'data-seq="{"" if f.get("seq") is None else f["seq"]}"'
        )
    out.append(
        _table(
            ["severity", "kind", "chain", "seq", "count", "detail"],
            rows,
            numeric=(3, 4),
            mono=(2,),
            row_attrs=attrs,
            empty="No findings: every check passed.",
        )
    )
    signers = report["checkpoints"]["signers"]
    if signers:
        out.append("<h3>Keys that signed checkpoints in the database</h3>")
        out.append(
            _table(
                ["key id", "trusted", "checkpoints", "chains", "first", "last"],
                [
                    [
                        s["key_id"],
                        "not checked" if s["trusted"] is None else "yes" if s["trusted"] else "NO",
                        s["checkpoints"],
                        s["chains"],
                        _when(s["first"]),
                        _when(s["last"]),
                    ]
                    for s in signers
                ],
                numeric=(2, 3),
                mono=(0,),
            )
        )
    out.append("</section>")
    return out


def _coverage(report: Mapping[str, Any]) -> list[str]:
    c = report["coverage"]
    a = report["activity"]
    r = report["retention"]
    out = ['<section id="coverage"><h2>Coverage</h2>', '<div class="cards">']
    for n, label in (
        (a["records"], "records in the period"),
        (c["chains_active"], "chains that wrote in the period"),
        (len(c["services"]), "services"),
        (report["problems"]["records"], "records stored with problems"),
        (c["quarantined_in_period"], "quarantined records"),
        (len(c["gaps"]), "gaps found (missing, truncated, deleted)"),
        (len(c["unanchored"]), "unanchored or unclosed chain ends"),
    ):
        out.append(f'<div class="card"><div class="n">{n:,}</div><div class="l">{_html.escape(label)}</div></div>')
    out.append("</div>")
    out.append(
        f"<p>The database holds {r['records_in_database']:,} records from {text(r['oldest_record'] or '-')} to "
        f"{text(r['newest_record'] or '-')} ({_age(r['days_held'])}).</p>"
    )
    out.append("<h3>Services</h3>")
    out.append(
        _table(
            [
                "service",
                "hosts",
                "chains",
                "records",
                "first",
                "last",
                "open chains",
                "chains with errors",
                "quiet days",
            ],
            [
                [
                    s["service"],
                    ", ".join(s["hosts"]),
                    s["chains"],
                    s["records"],
                    _when(s["first"]),
                    _when(s["last"]),
                    s["open_chains"],
                    s["chains_with_errors"],
                    _quiet(s["quiet_days"]),
                ]
                for s in c["services"]
            ],
            numeric=(2, 3, 6, 7),
            empty="No service wrote in this period.",
        )
    )
    out.append(f"<h3>Chains ({c['chains_total_listed']:,})</h3>")
    out.append(
        '<p class="meta">One chain per emitter (process or ingest worker). Closed: ended by a signed closing '
        "checkpoint (a clean shutdown, or adopted after a crash). Unanchored: records after the newest "
        "checkpoint.</p>"
    )
    if c["chains_total_listed"] > len(c["chains"]):
        out.append(
            f'<p class="caveat">{len(c["chains"]):,} of {c["chains_total_listed"]:,} chains listed, those '
            "with errors first.</p>"
        )
    rows, attrs = [], []
    for ch in c["chains"]:
        closed = ch["closed"]
        state = _Raw(
            '<span class="pill ok">closed</span>'
            if closed is True
            else '<span class="pill warn">open</span>'
            if closed is False
            else '<span class="pill">no checkpoint</span>'
        )
        errors = _Raw(f'<span class="pill bad">{ch["errors"]}</span>' if ch["errors"] else "0")
        kinds = ", ".join(sorted({f["kind"] for f in ch["findings"]}))
        emitter = f"{ch['service'] or '?'}@{ch['host'] or '?'}" + (f" pid {ch['pid']}" if ch["pid"] is not None else "")
        seqs = f"{ch['first_seq_in_period']}..{ch['last_seq_in_period']}" if ch["first_seq_in_period"] else ""
        rows.append(
            [
                ch["chain_id"],
                emitter,
                ch["records_in_period"],
                _Raw(
                    f'<span class="nw">{text(_when(ch["first_in_period"]))}</span><br>'
                    f'<span class="nw">{text(_when(ch["last_in_period"]))}</span>'
                ),
                seqs,
                state,
                ch["unanchored"],
                f"{ch['problem_records_in_period']} / {ch['quarantined_in_period']}",
                errors,
                kinds,
            ]
        )
        attrs.append(f' class="chain" data-chain="{text(ch["chain_id"])}"')
    out.append(
        _table(
            [
                "chain",
                "emitter",
                "records",
                "first / last",
                "seq",
                "state",
                "unanchored",
                "problems / quarantined",
                "errors",
                "findings",
            ],
            rows,
            numeric=(2, 6),
            ids=(0,),
            row_attrs=attrs,
            empty="No chain wrote in this period.",
        )
    )
    if c["gaps"]:
        out.append("<h3>Gaps</h3>")
        out.append(
            _table(
                ["kind", "chain", "seq", "count", "detail"],
                [[g["kind"], g.get("chain_id"), g.get("seq"), g.get("count"), g["detail"]] for g in c["gaps"]],
                numeric=(2, 3),
                mono=(1,),
            )
        )
    if c["unanchored"]:
        out.append("<h3>Unanchored spans and unclosed chains</h3>")
        out.append(
            _table(
                ["severity", "kind", "chain", "from seq", "records", "detail"],
                [
                    [u["severity"], u["kind"], u.get("chain_id"), u.get("seq"), u.get("count"), u["detail"]]
                    for u in c["unanchored"]
                ],
                numeric=(3, 4),
                mono=(2,),
            )
        )
    if c["quarantined"]:
        out.append("<h3>Quarantined records</h3>")
        out.append(
            _table(
                ["time", "chain", "seq", "actor", "action", "resource", "result", "problems"],
                [
                    [
                        q["timestamp"],
                        q["chain_id"],
                        q["seq"],
                        q["actor_id"],
                        q["action"],
                        f"{q['resource_type']}/{q['resource_id']}",
                        q["result"],
                        "; ".join(q["problems"] or []),
                    ]
                    for q in c["quarantined"]
                ],
                numeric=(2,),
                mono=(1,),
            )
        )
    out.append("</section>")
    return out


def _when(value: str | None) -> str:
    """An RFC 3339 UTC time to the second, for tables (the JSON keeps microseconds)."""
    if not value:
        return ""
    return value[:19].replace("T", " ") + "Z" if len(value) >= 19 else value


def _age(days: int | None) -> str:
    if not days:
        return "less than a day"
    if days < 62:
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{days / 30.44:.1f} months"


def _quiet(days: Sequence[str]) -> str:
    if not days:
        return "none"
    shown = ", ".join(days[:5])
    return f"{len(days)}: {shown}{', ...' if len(days) > 5 else ''}"


def _activity(report: Mapping[str, Any]) -> list[str]:
    a = report["activity"]
    bucket = report["period"]["bucket"]
    labels = [_label(bucket, b["start"]) for b in a["buckets"]]
    results = ("success", "failure", "denied", "other")
    stacked = svg.stacked_bars(
        "chart-records",
        f"Records per {bucket} by result",
        labels,
        [
            Series(name, COLORS[name], [b[name] for b in a["buckets"]])
            for name in results
            if name != "other" or any(b["other"] for b in a["buckets"])
        ],
    )
    attempts = svg.line_chart(
        "chart-attempts",
        f"Denied and failed attempts per {bucket}",
        labels,
        [
            Series("denied", COLORS["denied"], [b["denied"] for b in a["buckets"]]),
            Series("failure", COLORS["failure"], [b["failure"] for b in a["buckets"]]),
        ],
    )
    bars = [("success", COLORS["success"]), ("failure", COLORS["failure"]), ("denied", COLORS["denied"])]

    def rows(entries: Sequence[Mapping[str, Any]], label: Any) -> list[tuple[str, list[int]]]:
        return [(label(e), [e["records"] - e["failure"] - e["denied"], e["failure"], e["denied"]]) for e in entries]

    actors = svg.bar_list(
        "chart-actors", "Top actors by records", rows(a["top_actors"], lambda e: e["actor_id"] or "(none)"), bars
    )
    resources = svg.bar_list(
        "chart-resources",
        "Top resources by records",
        rows(a["top_resources"], lambda e: f"{e['resource_type'] or '(none)'}/{e['resource_id'] or '(none)'}"),
        bars,
    )
    actions = svg.bar_list(
        "chart-actions", "Top actions by records", rows(a["top_actions"], lambda e: e["action"] or "(none)"), bars
    )
    by = a["by_result"]
    return [
        '<section id="activity"><h2>Activity</h2>',
        f"<p>{a['records']:,} records: {by['success']:,} success, {by['failure']:,} failure, {by['denied']:,} denied"
        + (f", {by['other']:,} without a valid result" if by["other"] else "")
        + f"; {a['distinct_actors']:,} distinct actors. Times are UTC; one bar per {bucket}.</p>",
        f"<h3>Records per {bucket} by result</h3>",
        stacked,
        "<h3>Denied and failed attempts over time</h3>",
        attempts,
        "<h3>Top actors</h3>",
        actors,
        "<h3>Top resources</h3>",
        resources,
        "<h3>Top actions</h3>",
        actions,
        "</section>",
    ]


def _failures(report: Mapping[str, Any]) -> list[str]:
    f = report["failed_attempts"]
    chart = svg.bar_list(
        "chart-failures",
        f"Failed or denied attempts per actor above {f['threshold']}",
        [(e["actor_id"] or "(none)", [e["failed_attempts"] - e["denied"], e["denied"]]) for e in f["actors"]],
        [("failure", COLORS["failure"]), ("denied", COLORS["denied"])],
        threshold=f["threshold"],
    )
    more = (
        f'<p class="caveat">{len(f["actors"])} of {f["actors_above"]} actors shown.</p>'
        if f["actors_above"] and f["actors_above"] > len(f["actors"])
        else ""
    )
    return [
        '<section id="failed-attempts"><h2>Failed attempts per actor above the threshold</h2>',
        f"<p>The seed's security-monitoring question for the period: actors with more than {f['threshold']} failed "
        f"or denied attempts. {f['actors_above'] or 0} actor(s).</p>",
        chart,
        more,
        _table(
            ["actor", "failed or denied", "of which denied", "first", "last"],
            [
                [e["actor_id"], e["failed_attempts"], e["denied"], e["first_attempt"], e["last_attempt"]]
                for e in f["actors"]
            ],
            numeric=(1, 2),
            empty="No actor above the threshold.",
        ),
        f"<details><summary>The SQL (the seed's query, with this period)</summary><pre>{text(f['sql'])}</pre></details>",
        "</section>",
    ]


def _problems(report: Mapping[str, Any]) -> list[str]:
    p = report["problems"]
    if not p["records"]:
        return [
            '<section id="problems"><h2>Problem records</h2><p>No record in the period was stored with '
            "validation problems or quarantined.</p></section>"
        ]
    rows = [
        [
            r["timestamp"],
            r["actor_id"],
            r["action"],
            f"{r['resource_type']}/{r['resource_id']}",
            r["result"],
            r["chain_id"],
            r["seq"],
            "; ".join(r["problems"] or []),
        ]
        for r in p["sample"]
    ]
    return [
        '<section id="problems"><h2>Problem records</h2>',
        f"<p>{p['records']:,} record(s) in the period were stored with validation problems or quarantined: they are "
        "part of the trail and verified like any other, and their problems say what was wrong with what the "
        f"application passed. {'The first ' + str(len(rows)) + ' are listed.' if p['records'] > len(rows) else ''}</p>",
        _table(
            ["time", "actor", "action", "resource", "result", "chain", "seq", "problems"], rows, numeric=(6,), mono=(5,)
        ),
        "</section>",
    ]


def _timelines(report: Mapping[str, Any]) -> list[str]:
    timelines = report.get("timelines") or []
    if not timelines:
        return []
    out = ['<section id="timelines"><h2>Timelines</h2>']
    for t in timelines:
        records = t["records"]
        out.append(
            f'<h3 data-timeline="{text(t["kind"])}:{text(t["id"])}">{text(t["kind"]).capitalize()} '
            f'<span class="mono">{text(t["id"])}</span>: {t["total"] or 0:,} record(s)</h3>'
        )
        if not records:
            out.append('<p class="meta">No record.</p>')
            continue
        items = []
        for r in records:
            result = r.get("result") or "no result"
            pill = "ok" if result == "success" else "bad"
            problems = f' <span class="pill warn">{text("; ".join(r["problems"]))}</span>' if r.get("problems") else ""
            reason = f" — {text(r['reason'])}" if r.get("reason") else ""
            items.append(
                f'<li><span class="t">{text(r["timestamp"])}</span> [{text(r.get("service_name") or "?")}] '
                f"<b>{text(r.get('actor_id') or '?')}</b> ({text(r.get('actor_type') or '?')}) "
                f"{text(r.get('action') or '?')} {text(r.get('resource_type') or '?')}/"
                f'{text(r.get("resource_id") or "?")} <span class="pill {pill}">{text(result)}</span>{reason}'
                f'{problems} <span class="t">chain {text((r.get("chain_id") or "")[:8])} seq {text(r.get("seq"))}'
                "</span></li>"
            )
        out.append(f'<ol class="timeline">{"".join(items)}</ol>')
        if t["more"]:
            out.append(f'<p class="caveat">{t["more"]:,} more record(s) not shown.</p>')
    out.append("</section>")
    return out


def _controls(report: Mapping[str, Any]) -> list[str]:
    out = ['<section id="controls"><h2>Control mapping</h2>', f'<p class="caveat">{_html.escape(DISCLAIMER)}</p>']
    for c in report["controls"]:
        evidence = "".join(f"<li>{text(e)}</li>" for e in c["evidence"])
        out.append(
            f"<h3>{text(c['framework'])} — {text(c['control'])}</h3><p><i>{text(c['text'])}</i></p>"
            f"<p>Evidence in this report:</p><ul>{evidence}</ul><p>Not shown by this report: {text(c['not_shown'])}</p>"
        )
    out.append("</section>")
    return out


def _commands(report: Mapping[str, Any]) -> list[str]:
    out = [
        '<section id="commands"><h2>Re-run every check yourself</h2>',
        '<p>With the otel-audit command (<span class="mono">pip install otel-audit</span>) and read access to the '
        'database (set <span class="mono">OTEL_AUDIT_DSN</span> to its connection string):</p>',
    ]
    for c in report["commands"]:
        out.append(f"<p>{text(c['purpose'])}:</p><pre>{text(c['command'])}</pre>")
    out.append("</section>")
    return out
