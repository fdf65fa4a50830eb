"""The fast pass: prove one sequence range of one chain intact, or say it needs the full walk.

Nearly every row of a real trail is intact, so verification first checks
ranges of ``(chain, seq)`` on their own, in parallel worker processes
(:mod:`otel_audit.verify.parallel`). A range is *clean* when every row in it,
in stored order:

* carries the next sequence number (the first row: the range's first number);
* has bytes that hash to the stored hash and parse as a record document with
  only known fields;
* has queryable columns equal to the document's fields;
* links to the row before it (the first row's link is checked when the ranges
  are joined).

Anything else (a gap, a changed column, a foreign field, a broken link) makes
the range *dirty*, and the whole chain is then walked again by
:class:`~otel_audit.verify.chain_walk.ChainWalker`, which classifies every
finding exactly. The fast pass never produces a finding, so it can only make
verification faster, never different.

Columns are compared without turning 30 columns into 30 Python objects per
row: PostgreSQL renders the text columns as one compact JSON array of strings
(``array_to_json`` of a ``text[]``) and the verifier renders the same fields of
the sealed document with ``orjson``; equal bytes mean equal values, because
both renderings are JSON and a JSON string cannot equal a number, list or
object. Any difference in rendering (an escape written another way) only sends
the chain to the full walk. The database still only supplies data: every
comparison happens here.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg import sql

from otel_audit.core.record import RECORD_DOMAIN, RECORD_FIELDS
from otel_audit.verify.exact import json_column_equal, loads_or_unreadable

__all__ = ["SEQ_MAX", "SEQ_MIN", "ChainGroup", "RangeResult", "RangeTask", "check_task"]

SEQ_MIN = -(2**63)
SEQ_MAX = 2**63 - 1

#: Columns the server renders into the JSON array of text, and how (text forms
#: for uuid, timestamptz and inet, exactly as they are sealed).
_TEXT_SQL = {
    "id": "id::text",
    "chain_id": "chain_id::text",
    "timestamp": "pg_catalog.to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "ip_address": "pg_catalog.abbrev(ip_address)",
}
_INT_FIELDS = ("v", "trace_flags", "severity_number")  # seq is its own column
_LIST_FIELDS = ("changed_fields", "problems")
_JSON_FIELDS = ("old_values", "attributes")
_TEXT_FIELDS = tuple(f for f in RECORD_FIELDS if f not in (*_INT_FIELDS, *_LIST_FIELDS, *_JSON_FIELDS, "seq"))
assert set(_TEXT_FIELDS) | {*_INT_FIELDS, *_LIST_FIELDS, *_JSON_FIELDS, "seq"} == set(RECORD_FIELDS)

_FIELD_SET = frozenset(RECORD_FIELDS)
# The lower bounds of the two arrays are rendered too: a binary array arrives as a Python list without
# its bounds, and '[0:1]={a,b}' is another value than '{a,b}' (changed_fields[1] differs).
_COLUMNS = (
    "seq, hash, canonical, pg_catalog.array_to_json(ARRAY[{text}, "
    "pg_catalog.array_lower(changed_fields, 1)::text, pg_catalog.array_lower(problems, 1)::text]::text[])::text, "
    "format_version, trace_flags, severity_number, changed_fields, problems, old_values::text, attributes::text"
).format(text=", ".join(_TEXT_SQL.get(f, f) for f in _TEXT_FIELDS))
_RANGE_QUERY = (
    f"COPY (SELECT {_COLUMNS} FROM audit_logs WHERE chain_id = {{chain}}::uuid AND seq BETWEEN {{lo}} AND {{hi}} "
    "ORDER BY seq) TO STDOUT (FORMAT BINARY)"
)
_GROUP_QUERY = (
    # ORDER BY the table's columns, not the text output column of the same name: the unique index
    # then streams the rows in order instead of a sort of the whole result first.
    f"COPY (SELECT chain_id::text, {_COLUMNS} FROM audit_logs a WHERE a.chain_id = ANY({{chains}}::uuid[]) "
    "ORDER BY a.chain_id, a.seq) TO STDOUT (FORMAT BINARY)"
)
# The rendered array is read as raw bytes (a text value's binary form is its UTF-8).
_TYPES = ["int8", "text", "bytea", "bytea", "int2", "int4", "int4", "text[]", "text[]", "text", "text"]


class ChainGroup(NamedTuple):
    """Several whole chains, small ones, read with one query (a query per small chain would cost more
    than checking its rows)."""

    chain_ids: tuple[str, ...]
    watch: dict[str, frozenset[int]]  # per chain, where signed checkpoints cover seqs
    first: dict[str, int] | None = None  # per chain, its first seq when not 1 (the rest was archived)


class RangeTask(NamedTuple):
    """Rows of ``chain_id`` whose seq column is in ``[lo, hi]``; the first must carry ``first``."""

    chain_id: str
    index: int  # type: ignore[assignment]  # position of the range in its chain (shadows tuple.index)
    lo: int
    hi: int
    first: int
    watch: frozenset[int] = frozenset()  # seqs signed checkpoints cover: their hashes are collected


@dataclass
class RangeResult:
    chain_id: str
    index: int
    clean: bool
    rows: int = 0  # rows read (all of the range when clean)
    invalid: int = 0  # records flagged with validation problems
    first_seq: int | None = None
    first_prev: str | None = None  # the first record's prev_hash: joined with the range before
    first_timestamp: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    last_timestamp: str | None = None
    observed: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    why: str = ""  # what made the range dirty (for logs and tests; the full walk reports it properly)


def check_task(conn: psycopg.Connection, task: RangeTask | ChainGroup) -> list[RangeResult]:
    """Stream the task's rows and check them: one result per range (a whole chain for a group).

    Each range is checked up to its first doubt; the rest of a dirty range is
    read and discarded rather than cancelled: a cancel would abort the snapshot
    transaction the other ranges are read in.
    """
    if isinstance(task, RangeTask):
        query = sql.SQL(_RANGE_QUERY).format(
            chain=sql.Literal(task.chain_id), lo=sql.Literal(task.lo), hi=sql.Literal(task.hi)
        )
    else:
        query = sql.SQL(_GROUP_QUERY).format(chains=sql.Literal(list(task.chain_ids)))
    with conn.cursor() as cur, cur.copy(query) as copy:
        if isinstance(task, RangeTask):
            copy.set_types(_TYPES)
            results = [_check_rows(copy.rows(), task)]
        else:
            copy.set_types(["text", *_TYPES])
            results = []
            for chain_id, rows in itertools.groupby(copy.rows(), key=_first):
                first = task.first.get(chain_id, 1) if task.first else 1
                whole = RangeTask(chain_id, 0, SEQ_MIN, SEQ_MAX, first, task.watch.get(chain_id, frozenset()))
                results.append(_check_rows(map(_rest, rows), whole))
        while copy.read():  # psycopg leaves an unfinished COPY running: drain it
            pass
    return results


_first = operator.itemgetter(0)
_rest = operator.itemgetter(slice(1, None))


def _check_rows(rows: Iterable[tuple[Any, ...]], task: RangeTask) -> RangeResult:
    result = RangeResult(task.chain_id, task.index, clean=False)
    watch: Collection[int] = task.watch
    observed = result.observed
    sha256 = hashlib.sha256
    loads, dumps = orjson.loads, orjson.dumps
    loads_json, json_equal = loads_or_unreadable, json_column_equal
    domain = RECORD_DOMAIN
    text_fields, field_set = _TEXT_FIELDS, _FIELD_SET
    expected = task.first
    link: str | None = None
    invalid = 0
    doc: Any = {}
    for seq, stored_hash, canonical, rendered, v, flags, severity, changed, problems, old, attrs in rows:
        if seq != expected:
            result.why = f"seq {seq} where {expected} was next"
            break
        computed = sha256(domain + canonical).hexdigest()
        if computed != stored_hash:
            result.why = f"seq {seq}: bytes do not hash to the stored hash"
            break
        try:
            doc = loads(canonical)
        except orjson.JSONDecodeError:
            doc = None
        # Exact, by type: == alone would take true for 1 and 1.0 for 1 (see verify/exact.py).
        same = (
            doc.__class__ is dict
            and doc.keys() <= field_set
            and (sealed_seq := doc.get("seq")) == seq
            and sealed_seq.__class__ is int
            and dumps(
                [
                    *map(doc.get, text_fields),
                    "1" if doc.get("changed_fields") else None,
                    "1" if doc.get("problems") else None,
                ]
            )
            == rendered
            and (x := doc.get("v")) == v
            and x.__class__ is v.__class__
            and (x := doc.get("trace_flags")) == flags
            and x.__class__ is flags.__class__
            and (x := doc.get("severity_number")) == severity
            and x.__class__ is severity.__class__
            and doc.get("changed_fields") == changed
            and doc.get("problems") == problems
            and json_equal(doc, "attributes", loads_json(attrs), attrs, canonical)
            and (
                old is None
                and "old_values" not in doc
                or json_equal(doc, "old_values", loads_json(old), old, canonical)
            )
        )
        if not same:
            result.why = f"seq {seq}: a column differs from the sealed document, or the document is malformed"
            break
        if link is None:
            result.first_seq, result.first_prev, result.first_timestamp = (
                seq,
                doc.get("prev_hash"),
                doc.get("timestamp"),
            )
        elif doc.get("prev_hash") != link:
            result.why = f"seq {seq}: prev_hash does not link to seq {seq - 1}"
            break
        link = computed
        if problems:
            invalid += 1
        if seq in watch:
            observed[seq] = (computed, doc.get("timestamp"))
        expected = seq + 1
    else:
        result.clean = True
        if link is not None:
            result.last_seq, result.last_hash, result.last_timestamp = expected - 1, link, doc.get("timestamp")
    result.rows = expected - task.first
    result.invalid = invalid
    return result
