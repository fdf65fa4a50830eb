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
comparison happens here. Two shortcuts keep the cost per row down, both exact:
``chain_id`` is compared with the chain the rows were selected by instead of
being rendered per row, and an ``attributes`` text equal to an earlier row's
that held only strings is compared through that row's parsed value (``==``
with an object of strings is exact: a string equals only a string).
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg import sql

from otel_audit.core.record import RECORD_DOMAIN, RECORD_FIELDS
from otel_audit.verify.exact import json_column_equal, loads_or_unreadable, strings_only, utc_text

__all__ = [
    "CHUNK_ROWS",
    "SEQ_MAX",
    "SEQ_MIN",
    "ChainGroup",
    "RangeResult",
    "RangeTask",
    "check_task",
    "chunked_rows_supported",
]

SEQ_MIN = -(2**63)
SEQ_MAX = 2**63 - 1

#: Columns the server renders into the JSON array of text, and how (text forms
#: for uuid, timestamptz and inet, exactly as they are sealed).
_TEXT_SQL = {
    "id": "id::text",
    "timestamp": utc_text("timestamp"),
    "ip_address": "pg_catalog.abbrev(ip_address)",
}
_INT_FIELDS = ("v", "trace_flags", "severity_number")  # seq is its own column
_LIST_FIELDS = ("changed_fields", "problems")
_JSON_FIELDS = ("old_values", "attributes")
# chain_id is compared with the chain the rows were selected by (its canonical text), not rendered per row.
_TEXT_FIELDS = tuple(
    f for f in RECORD_FIELDS if f not in (*_INT_FIELDS, *_LIST_FIELDS, *_JSON_FIELDS, "seq", "chain_id")
)
assert set(_TEXT_FIELDS) | {*_INT_FIELDS, *_LIST_FIELDS, *_JSON_FIELDS, "seq", "chain_id"} == set(RECORD_FIELDS)

_FIELD_SET = frozenset(RECORD_FIELDS)
# The lower bounds of the two arrays are rendered too: a binary array arrives as a Python list without
# its bounds, and '[0:1]={a,b}' is another value than '{a,b}' (changed_fields[1] differs).
_COLUMNS = (
    "seq, hash, canonical, pg_catalog.array_to_json(ARRAY[{text}, "
    "pg_catalog.array_lower(changed_fields, 1)::text, pg_catalog.array_lower(problems, 1)::text]::text[])::text, "
    "format_version, trace_flags, severity_number, changed_fields, problems, old_values::text, attributes::text"
).format(text=", ".join(_TEXT_SQL.get(f, f) for f in _TEXT_FIELDS))
_RANGE_QUERY = (
    f"SELECT {_COLUMNS} FROM audit_logs WHERE chain_id = {{chain}}::uuid AND seq BETWEEN {{lo}} AND {{hi}} ORDER BY seq"
)
_GROUP_QUERY = (
    # ORDER BY the table's columns, not the text output column of the same name: the unique index
    # then streams the rows in order instead of a sort of the whole result first.
    f"SELECT chain_id::text, {_COLUMNS} FROM audit_logs a WHERE a.chain_id = ANY({{chains}}::uuid[]) "
    "ORDER BY a.chain_id, a.seq"
)
#: The columns' types, for the COPY fallback (a result set carries its own).
_TYPES = ["int8", "text", "bytea", "text", "int2", "int4", "int4", "text[]", "text[]", "text", "text"]
#: Rows per chunk when rows are streamed in chunks (libpq 17 and later; see :func:`_stream`). Measured:
#: 100 to 1,000 cost the same with two workers, and 100 lets one worker overlap with its server best.
CHUNK_ROWS = 100


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
        types = _TYPES
    else:
        query = sql.SQL(_GROUP_QUERY).format(chains=sql.Literal(list(task.chain_ids)))
        types = ["text", *_TYPES]
    with conn.cursor(binary=True) as cur:
        rows = _stream(cur, query, types)
        if isinstance(task, RangeTask):
            results = [_check_rows(rows, task)]
        else:
            results = []
            for chain_id, chain_rows in itertools.groupby(rows, key=_first):
                first = task.first.get(chain_id, 1) if task.first else 1
                whole = RangeTask(chain_id, 0, SEQ_MIN, SEQ_MAX, first, task.watch.get(chain_id, frozenset()))
                results.append(_check_rows(map(_rest, chain_rows), whole))
        for _ in rows:  # read the rest of a dirty range: leaving the query unfinished would cancel it
            pass
    return results


def chunked_rows_supported() -> bool:
    """Can libpq deliver a result in chunks of rows (``PQsetChunkedRowsMode``, libpq 17 and later)?"""
    return psycopg.pq.version() >= 170000


def _stream(cur: psycopg.Cursor[Any], query: sql.Composed, types: list[str]) -> Iterator[tuple[Any, ...]]:
    """The query's rows, in binary, read with the least work per row this libpq allows.

    With libpq 17 or later the rows arrive in chunks of :data:`CHUNK_ROWS`
    (``cursor.stream(size=...)``), so psycopg's protocol machinery (a generator
    step and a wait) runs once per chunk; read row by row, through ``COPY`` or
    single-row mode, reading took a third of the verifier's CPU time per row
    (measured: 3.6 of 10.5 µs; 2.2 µs in chunks). Older libpq reads the same
    rows through a binary ``COPY``. The caller must read every row: a stream closed early
    cancels its query, and the cancel would abort the snapshot transaction
    every range is read in.
    """
    if chunked_rows_supported():
        yield from cur.stream(query, size=CHUNK_ROWS)
        return
    with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as copy:
        copy.set_types(types)
        yield from copy.rows()


_UNSET = object()
_first = operator.itemgetter(0)
_rest = operator.itemgetter(slice(1, None))


def _check_rows(rows: Iterable[tuple[Any, ...]], task: RangeTask) -> RangeResult:
    result = RangeResult(task.chain_id, task.index, clean=False)
    watch: Collection[int] = task.watch
    observed = result.observed
    domain_hash = hashlib.sha256(RECORD_DOMAIN)
    loads, dumps = orjson.loads, orjson.dumps
    loads_json, json_equal = loads_or_unreadable, json_column_equal
    text_fields, field_set = _TEXT_FIELDS, _FIELD_SET
    chain_id = task.chain_id
    expected = task.first
    link: str | None = None
    invalid = 0
    doc: Any = {}
    plain_text: object = _UNSET  # the last attributes text that held only strings, and its value
    plain_value: Any = None
    for seq, stored_hash, canonical, rendered, v, flags, severity, changed, problems, old, attrs in rows:
        if seq != expected:
            result.why = f"seq {seq} where {expected} was next"
            break
        hasher = domain_hash.copy()
        hasher.update(canonical)
        computed = hasher.hexdigest()
        if computed != stored_hash:
            result.why = f"seq {seq}: bytes do not hash to the stored hash"
            break
        try:
            doc = loads(canonical)
        except orjson.JSONDecodeError:
            doc = None
        # Most rows of a chain store the same attributes text, an object of strings: its parsed value
        # is kept, and == against it is exact (a string equals only a string).
        if attrs == plain_text:
            attrs_same = doc.__class__ is dict and doc.get("attributes") == plain_value
        else:
            stored = loads_json(attrs)
            attrs_same = doc.__class__ is dict and json_equal(doc, "attributes", stored, attrs, canonical)
            if attrs_same and strings_only(stored):
                plain_text, plain_value = attrs, stored
        # Exact, by type: == alone would take true for 1 and 1.0 for 1 (see verify/exact.py).
        same = (
            doc.__class__ is dict
            and field_set.issuperset(doc)
            and (sealed_seq := doc.get("seq")) == seq
            and doc.get("chain_id") == chain_id
            and sealed_seq.__class__ is int
            and dumps(
                [
                    *map(doc.get, text_fields),
                    "1" if doc.get("changed_fields") else None,
                    "1" if doc.get("problems") else None,
                ]
            )
            == rendered.encode()
            and (x := doc.get("v")) == v
            and x.__class__ is v.__class__
            and (x := doc.get("trace_flags")) == flags
            and x.__class__ is flags.__class__
            and (x := doc.get("severity_number")) == severity
            and x.__class__ is severity.__class__
            and doc.get("changed_fields") == changed
            and doc.get("problems") == problems
            and attrs_same
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
