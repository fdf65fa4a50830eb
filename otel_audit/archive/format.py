"""The archive format: Parquet bundles of sealed records, signed manifests chained run to run.

No PostgreSQL here: the archive writer, ``verify-archive`` and the queries
over an archive all use this module. Layout under the destination (a
directory or ``s3://bucket/prefix``), every object written once::

    records/run=000001/part-00001.parquet       records: queryable columns + the sealed bytes
    checkpoints/run=000001/part-00001.parquet   the signed checkpoints that anchor them
    manifests/000001.manifest                   signed list of the run's files and chain ranges
    plans/000001.json                           what an interrupted run still has to write (unsigned)

A *records bundle* holds, per chain, a contiguous range of sequence numbers
(rows ordered by chain id, then seq). Its columns are exactly
:data:`RECORD_COLUMNS`; ``canonical`` is the record's hashed bytes (RFC 8785
JSON, UTF-8, stored as a Parquet string), every other column is the record
field of the same name, derived from those bytes (:func:`derive_columns`), so
any engine (DuckDB, Athena, Trino, Spark) can query it and ``verify-archive``
can recheck every value. Fields without a column are read from ``canonical``
(``json_extract``).

A *manifest* is canonical JSON signed with Ed25519 (the checkpoint key type)
over ``MANIFEST_DOMAIN || body``, stored as ``body \\n base64(signature) \\n``
like a checkpoint. See :func:`manifest_body` for its members.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from otel_audit.core.canonical import canonical_json
from otel_audit.core.keys import KEY_ID_HEX_CHARS, SigningKey, VerifyKey
from otel_audit.errors import ManifestError

__all__ = [
    "ARCHIVE_FORMAT",
    "CHECKPOINT_COLUMNS",
    "MANIFEST_DOMAIN",
    "RECORD_COLUMNS",
    "Manifest",
    "ManifestError",
    "checkpoints_schema",
    "derive_columns",
    "manifest_name",
    "parse_manifest",
    "records_schema",
    "sign_manifest",
]

ARCHIVE_FORMAT = 1
MANIFEST_DOMAIN = b"otel-audit.archive-manifest.v1\x00"

#: Queryable columns of a records bundle, in order (``canonical`` last).
RECORD_COLUMNS: tuple[str, ...] = (
    "chain_id",
    "seq",
    "id",
    "timestamp",
    "actor_id",
    "actor_type",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "ip_address",
    "user_agent",
    "session_id",
    "user_id",
    "reason",
    "changed_fields",
    "trace_id",
    "span_id",
    "service_name",
    "host_name",
    "canonical",
)
CHECKPOINT_COLUMNS: tuple[str, ...] = ("chain_id", "n", "seq", "body", "signature")

_RUN_NAME = re.compile(r"manifests/(\d{6})\.manifest")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{%d}" % KEY_ID_HEX_CHARS)


def records_schema() -> Any:
    import pyarrow as pa

    fields = []
    for name in RECORD_COLUMNS:
        if name == "seq":
            kind = pa.int64()
        elif name == "timestamp":
            kind = pa.timestamp("us", tz="UTC")
        elif name == "changed_fields":
            kind = pa.list_(pa.string())
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind, nullable=name not in ("chain_id", "seq", "id", "timestamp", "canonical")))
    return pa.schema(fields, metadata={b"otel_audit.archive": b"records-v1"})


def checkpoints_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("chain_id", pa.string(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("seq", pa.int64(), nullable=False),
            pa.field("body", pa.string(), nullable=False),
            pa.field("signature", pa.binary(), nullable=False),
        ],
        metadata={b"otel_audit.archive": b"checkpoints-v1"},
    )


def _json_schema() -> Any:
    """What the JSON reader extracts from the sealed bytes: the projected columns and the link."""
    import pyarrow as pa

    schema = records_schema()
    fields = [schema.field(n).with_nullable(True) for n in RECORD_COLUMNS if n != "canonical"]
    return pa.schema([*fields, pa.field("prev_hash", pa.string())])


def derive_columns(canonicals: Sequence[bytes] | Any) -> Any:
    """The projected columns and ``prev_hash`` of sealed records, as a pyarrow Table.

    ``canonicals``: the records' sealed bytes, as Python bytes or as a pyarrow
    string or binary array (a bundle's ``canonical`` column, which is then never
    turned into Python objects on the fast path).

    Fast path: Arrow's JSON reader over the records joined by newlines
    (canonical JSON never holds a raw newline; a record that does parses into
    more rows than there are records, which the count check sends down the
    exact path). A record whose fields do not fit the column types (possible
    only for records flagged with problems) sends the whole batch through the
    exact per-record path instead.
    """
    import pyarrow as pa
    import pyarrow.json as pj

    schema = _json_schema()
    if not len(canonicals):
        return schema.empty_table()
    if isinstance(canonicals, pa.ChunkedArray):
        canonicals = canonicals.combine_chunks()
    if isinstance(canonicals, pa.Array):
        joined, largest = _newline_joined(canonicals)
    else:
        joined, largest = pa.py_buffer(b"\n".join(canonicals)), max(map(len, canonicals))
    try:
        table = pj.read_json(
            pa.BufferReader(joined),
            read_options=pj.ReadOptions(block_size=max(1 << 22, 2 * largest + 2), use_threads=False),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        if table.num_rows == len(canonicals):
            return table.combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if isinstance(canonicals, pa.Array):
        canonicals = canonicals.cast(pa.binary()).to_pylist()
    return _derive_slowly(canonicals, schema)


def _newline_joined(column: Any) -> tuple[Any, int]:
    """Every value of a string or binary array followed by a newline, as one buffer (vectorized: no
    Python object per record), and the length of the longest value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = column.cast(pa.string()) if pa.types.is_binary(column.type) else column
    lines = pc.binary_join_element_wise(text, pa.scalar("", pa.string()), "\n")  # value + "\n" + ""
    offsets = pa.Array.from_buffers(pa.int32(), len(lines) + 1, [None, lines.buffers()[1]], offset=lines.offset)
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    longest = pc.max(pc.binary_length(text)).as_py() or 0
    return lines.buffers()[2][start:end], longest


def _derive_slowly(canonicals: Sequence[bytes], schema: Any) -> Any:
    from datetime import datetime

    import pyarrow as pa

    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    for canonical in canonicals:
        try:
            doc = orjson.loads(canonical)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        for name, values in columns.items():
            value = doc.get(name)
            kind = schema.field(name).type
            if name == "timestamp":
                value = _timestamp(value, datetime)
            elif pa.types.is_int64(kind):
                value = value if type(value) is int else None
            elif pa.types.is_list(kind):
                value = value if isinstance(value, list) and all(type(v) is str for v in value) else None
            elif type(value) is not str:
                value = None if value is None else orjson.dumps(value).decode()
            values.append(value)
    return pa.table(
        {name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()}, schema=schema
    )


def _timestamp(value: Any, datetime: Any) -> Any:
    if type(value) is not str:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class Manifest:
    run: int
    doc: dict[str, Any]
    body: bytes
    signature: bytes
    hash: str

    @property
    def key_id(self) -> str:
        return str(self.doc["key_id"])

    @property
    def envelope(self) -> bytes:
        return self.body + b"\n" + base64.b64encode(self.signature) + b"\n"

    def signature_valid(self, trusted: Mapping[str, VerifyKey]) -> bool | None:
        """True/False: signed by a trusted key / not verifying under it; None: the key is not trusted."""
        key = trusted.get(self.key_id)
        if key is None:
            return None
        return key.verify(self.signature, MANIFEST_DOMAIN + self.body)


def manifest_name(run: int) -> str:
    return f"manifests/{run:06d}.manifest"


def run_of_manifest_name(path: str) -> int | None:
    match = _RUN_NAME.fullmatch(path)
    return int(match.group(1)) if match else None


def manifest_hash(body: bytes) -> str:
    return hashlib.sha256(MANIFEST_DOMAIN + body).hexdigest()


def sign_manifest(key: SigningKey, doc: dict[str, Any]) -> Manifest:
    doc = {**doc, "key_id": key.key_id}
    body = canonical_json(doc)
    signature = key.sign(MANIFEST_DOMAIN + body)
    return Manifest(int(doc["run"]), doc, body, signature, manifest_hash(body))


def parse_manifest(data: bytes) -> Manifest:
    """A manifest from its two-line form (structure only; the signature is checked by the caller)."""
    body, sep, rest = data.partition(b"\n")
    if not sep:
        raise ManifestError("no signature line (expected '<body>\\n<base64 signature>\\n')")
    line = rest[:-1] if rest.endswith(b"\n") else rest
    try:
        signature = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"signature line is not base64: {exc}") from None
    if len(signature) != 64:
        raise ManifestError(f"an Ed25519 signature is 64 bytes, not {len(signature)}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "archive_manifest" or doc.get("v") != ARCHIVE_FORMAT:
        raise ManifestError("body is not an otel-audit archive manifest of format v1")
    _require(doc, {"v", "type", "archive_id", "run", "prev", "created", "before", "key_id", "files", "chains", "state"})
    if type(doc["run"]) is not int or doc["run"] < 1:
        raise ManifestError("run must be an integer >= 1")
    if (doc["run"] == 1) != (doc["prev"] is None):
        raise ManifestError("prev must be null exactly for run 1")
    if doc["prev"] is not None and not (isinstance(doc["prev"], str) and _HEX64.fullmatch(doc["prev"])):
        raise ManifestError("prev is malformed")
    if not (isinstance(doc["key_id"], str) and _KEY_ID.fullmatch(doc["key_id"])):
        raise ManifestError("key_id is malformed")
    for name in ("files", "chains"):
        if not isinstance(doc[name], list) or not all(isinstance(x, dict) for x in doc[name]):
            raise ManifestError(f"{name} must be a list of objects")
    for entry in doc["files"]:
        _require(entry, {"path", "kind", "sha256", "bytes", "rows", "chains"})
    for entry in doc["chains"]:
        _require(
            entry, {"chain_id", "first_seq", "last_seq", "first_prev", "last_hash", "records", "checkpoints", "genesis"}
        )
    state = doc["state"]
    if not isinstance(state, dict) or not isinstance(state.get("chains"), dict):
        raise ManifestError("state must be an object with a chains object")
    try:
        if canonical_json(doc) != body:
            raise ManifestError("body is not in canonical JSON form")
    except ValueError as exc:
        raise ManifestError(f"body is not canonical JSON: {exc}") from None
    return Manifest(doc["run"], doc, bytes(body), bytes(signature), manifest_hash(body))


def _require(obj: dict[str, Any], members: set[str]) -> None:
    if set(obj) != members:
        raise ManifestError(f"members differ from the format: {sorted(set(obj) ^ members)}")
