"""Rendering query results and reports: aligned tables, JSON, CSV."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

import orjson

__all__ = ["print_json", "render"]


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


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout  # looked up per call: sys.stdout may have been replaced
    if fmt == "json":
        print_json([dict(zip(columns, row, strict=True)) for row in rows], out)
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(v) for v in row])
    else:
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [len(c) for c in columns]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def print_json(data: Any, out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout
    out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_default).decode() + "\n")


def _default(value: Any) -> Any:
    return str(value)
