"""Rendering query results and reports: aligned tables, JSON, CSV.

Everything printed here may hold what an attacker stored: an actor id, a
message, a user agent, a registry column edited by a superuser. Each format
has one rule so that stored values cannot act on whoever reads the output:

* **table and text** (``--format table`` and ``timeline`` cells, ``verify``,
  ``status`` and ``verify-proof`` text): :func:`escape_text` makes every
  character that is not printable visible as an escape, as Python's ``repr``
  writes it -- control characters (``\\x1b``, ``\\n``, ``\\r``, ``\\t``),
  bidirectional controls (``\\u202e``, ``\\u2066``), zero-width and other format
  characters, line and paragraph separators, non-ASCII spaces. In table and
  timeline cells the backslash is doubled (``\\\\``) too, so that an escape in a
  cell always means the character and never its text; text lines leave it
  single (their messages quote values with ``repr``, which escapes them).
  No terminal escape sequence, line break or bidi override reaches the screen.
* **CSV** (``--format csv``): every cell is quoted (RFC 4180: a quote inside a
  cell is doubled), and a text cell that a spreadsheet could read as a formula
  gets a leading single quote (OWASP's advice against CSV injection): a cell
  beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, or
  with one of those after leading whitespace, or with their full-width forms
  (``＝ ＋ － ＠``). A text cell that really begins with a single quote gets one
  more, so the rule is reversible: *a text cell beginning with ``'`` had one
  ``'`` added; remove it to get the stored value*. Numbers and times are
  never changed. Nothing else is altered.
* **JSON** (``--format json``, ``--json``): exact. Characters that are not
  printable are written as JSON ``\\uXXXX`` escapes, which parse back to the
  very same string, so the values are exact and the terminal stays safe.
"""

from __future__ import annotations

import csv
import re
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TextIO

import orjson

__all__ = [
    "csv_cell",
    "display_width",
    "escape_text",
    "json_text",
    "print_json",
    "render",
    "render_timeline",
    "write_line",
]

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    short = _SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_text(value: str, *, backslash: bool = True) -> str:
    """``value`` with every non-printable character (and the backslash) written as a visible escape.

    Non-printable is what Python's ``str.isprintable`` says: Unicode categories
    Cc (controls, ESC among them), Cf (format: bidi overrides and isolates,
    zero-width characters), Zl, Zp, Zs other than the ASCII space, Cs, Co and Cn.
    ``backslash=False`` leaves backslashes as they are: for messages that
    already quote values with ``repr`` (the verifier's findings), which would
    otherwise show every escape doubled.
    """
    if value.isprintable() and (not backslash or "\\" not in value):
        return value
    if backslash:
        return "".join(_escape_char(ch) for ch in value)
    return "".join(ch if ch == "\\" else _escape_char(ch) for ch in value)


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes (after :func:`escape_text`): wide East Asian characters take two,
    combining marks none."""
    if text.isascii():
        return len(text)
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


# Cells a spreadsheet may evaluate: OWASP's list (= + - @ tab CR), also after leading whitespace (some
# spreadsheets trim it), and the full-width forms some locales accept as formula starts.
_FORMULA_START = re.compile("^[\\s\u3000]*[=+\\-@\uff1d\uff0b\uff0d\uff20]|^[\t\r]")


def csv_cell(value: Any) -> str:
    """One CSV cell's text: numbers and times as they are, text with a leading ``'`` where a spreadsheet
    could take it for a formula (or where it already begins with ``'``, so that the rule is reversible)."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float | Decimal | datetime):
        return _cell(value)
    text = _cell(value)
    if text.startswith("'") or _FORMULA_START.match(text):
        return "'" + text
    return text


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout  # looked up per call: sys.stdout may have been replaced
    if fmt == "json":
        print_json([dict(zip(columns, row, strict=True)) for row in rows], out)
    elif fmt == "csv":
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(v) for v in row])
    else:
        cells = [[escape_text(_cell(v)) for v in row] for row in rows]
        widths = [display_width(c) for c in columns]
        for row in cells:
            widths = [max(w, display_width(c)) for w, c in zip(widths, row, strict=True)]
        out.write("  ".join(_pad(c, w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write("  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def render_timeline(result: Any, title: str, out: TextIO | None = None) -> None:
    """Records in time order as a story: when (and how long after the first), where, who, what, on what, result.

    ``result`` is a :class:`otel_audit.query.QueryResult` holding (at least) the
    timeline columns. Every stored value is escaped as in tables.
    """
    out = out if out is not None else sys.stdout
    rows = result.as_dicts()
    if not rows:
        out.write(f"Timeline of {escape_text(title)}: no records\n")
        return
    times = [r["timestamp"] for r in rows if isinstance(r.get("timestamp"), datetime)]
    first, last = (min(times), max(times)) if times else (None, None)
    services = sorted({str(r.get("service_name")) for r in rows if r.get("service_name")})
    actors = sorted({str(r.get("actor_id")) for r in rows if r.get("actor_id")})
    head = f"Timeline of {title}: {len(rows)} record{'s' if len(rows) != 1 else ''}"
    if first is not None and last is not None:
        head += f", {_stamp(first)} to {_stamp(last)} ({(last - first).total_seconds():.3f}s)"
    out.write(escape_text(head) + "\n")
    if services:
        out.write(escape_text(f"services: {', '.join(services)}; actors: {', '.join(actors) or '-'}") + "\n")
    lines = []
    for r in rows:
        ts = r.get("timestamp")
        offset = f"+{(ts - first).total_seconds():.3f}s" if isinstance(ts, datetime) and first is not None else "?"
        actor = f"{_e(r.get('actor_id'))} ({_e(r.get('actor_type'))})"
        result_word = r.get("result")
        shown = _e(result_word) if result_word == "success" else _e(result_word).upper() if result_word else "NO RESULT"
        where = _e(r.get("service_name")) + (f"@{_e(r.get('host_name'))}" if r.get("host_name") else "")
        lines.append(
            [
                _stamp(ts) if isinstance(ts, datetime) else _e(ts),
                offset,
                f"[{where}]",
                actor,
                _e(r.get("action")),
                f"{_e(r.get('resource_type'))}/{_e(r.get('resource_id'))}",
                shown,
                r,
            ]
        )
    widths = [max(display_width(line[i]) for line in lines) for i in range(7)]
    for line in lines:
        r = line[7]
        text = "  ".join(_pad(str(cell), w) for cell, w in zip(line[:7], widths, strict=True)).rstrip()
        extras = []
        if r.get("reason"):
            extras.append(f"reason: {_e(r['reason'])}")
        if r.get("problems"):
            extras.append(f"PROBLEMS: {_e('; '.join(str(p) for p in r['problems']))}")
        ref = f"chain {_e(r.get('chain_id'))[:8]} seq {_e(r.get('seq'))}"
        if r.get("span_id"):
            ref += f" span {_e(r.get('span_id'))}"
        out.write(text + ("  " + "  ".join(extras) if extras else "") + f"  ({ref})\n")


def _e(value: Any) -> str:
    return escape_text(_cell(value)) if value is not None else "-"


def _stamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_line(text: str, out: TextIO | None = None) -> None:
    """Print one line of text output whose parts may hold stored values: every non-printable character
    escaped (:func:`escape_text`; backslashes are left single, messages quote values with ``repr``)."""
    out = out if out is not None else sys.stdout
    out.write(escape_text(text, backslash=False) + "\n")


def print_json(data: Any, out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout
    out.write(json_text(data) + "\n")


def json_text(data: Any) -> str:
    """Indented JSON whose non-printable characters are ``\\uXXXX`` escapes (the parsed values are exact)."""
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_default).decode()
    if text.isascii() and "\x7f" not in text:
        return text  # orjson escapes C0 controls itself; in ASCII only DEL is left
    return _JSON_UNSAFE.sub(_json_escape, text)


# Outside strings JSON text holds only ASCII, so every match is inside a string, where \uXXXX means the same.
_JSON_UNSAFE = re.compile(r"[^\x20-\x7e\n]")


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _default(value: Any) -> Any:
    return str(value)
