"""An independent verifier, written from docs/specification.md alone.

It imports nothing from ``otel_audit``: only the standard library, ``psycopg``
(to read the tables) and ``cryptography`` (Ed25519). Where the specification
names a rule, the code below cites the section. The tests
(tests/test_stranger_verifier.py) run it beside ``otel-audit verify`` on clean
and tampered trails: the two must agree on the exit code and on which records
are bad. A disagreement means either the tool or the specification is wrong.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

RECORD_DOMAIN = b"otel-audit.record.v1\x00"
CHAIN_DOMAIN = b"otel-audit.chain.v1\x00"
CHECKPOINT_DOMAIN = b"otel-audit.checkpoint.v1\x00"

# "Records": the members a record document may have.
RECORD_FIELDS = (
    "v id chain_id seq prev_hash timestamp actor_id actor_type action resource_type resource_id result "
    "ip_address user_agent session_id user_id reason changed_fields old_values trace_id span_id trace_flags "
    "service_name service_instance_id host_name scope severity_text severity_number event_name message "
    "attributes problems"
).split()
INT_COLUMNS = {"format_version": "v", "seq": "seq", "trace_flags": "trace_flags", "severity_number": "severity_number"}
ARRAY_COLUMNS = ("changed_fields", "problems")
JSON_COLUMNS = ("old_values", "attributes")
TS = '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\''
TEXT_COLUMNS = tuple(
    f
    for f in RECORD_FIELDS
    if f
    not in (
        "v",
        "seq",
        "trace_flags",
        "severity_number",
        *ARRAY_COLUMNS,
        *JSON_COLUMNS,
        "timestamp",
        "ip_address",
        "id",
        "chain_id",
    )
)
RECORD_KINDS = {"modified", "missing", "inserted", "reordered", "broken_link", "malformed", "record_hidden"}


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str  # "error" | "warning" | "info"
    chain_id: str | None
    seq: int | None
    detail: str = field(default="", compare=False)


@dataclass
class _Entry:
    pos: int
    link: str  # the hash the next record must name
    prev: str | None  # its own prev_hash (None: not judged)
    quarantined: bool = False


# ------------------------------------------------------------------ "Comparing columns with fields"
def load_exact(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def json_equal(a: Any, b: Any) -> bool:
    """The JSON rule: same JSON type, numbers by exact decimal value, booleans never numbers."""
    numbers = (int, Decimal)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if type(a) in numbers and type(b) in numbers:
        return Decimal(a) == Decimal(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return set(a) == set(b) and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


def inet_equal(field: Any, column: str | None) -> bool:
    if field is None or column is None:
        return field is None and column is None
    if field == column:
        return True
    try:
        return ipaddress.ip_address(field) == ipaddress.ip_address(column)
    except ValueError:
        return False


def array_equal(field: Any, column: list | None, dims: str | None) -> bool:
    if column is None:
        return field is None
    if not isinstance(field, list):
        return False
    if not column:
        return field == [] and dims is None
    return dims == f"[1:{len(column)}]" and all(isinstance(x, str) for x in field) and field == column


def int_equal(field: Any, column: Any) -> bool:
    if column is None:
        return field is None
    return type(field) is int and field == column


# ------------------------------------------------------------------ the verifier
class StrangerVerifier:
    def __init__(self, dsn: str, trusted_keys: Sequence[Path] = (), witnesses: Sequence[Path] = ()) -> None:
        self.dsn = dsn
        self.keys: dict[str, Ed25519PublicKey] | None = None
        if trusted_keys:
            self.keys = {}
            for path in trusted_keys:
                key = load_pem_public_key(Path(path).read_bytes())
                assert isinstance(key, Ed25519PublicKey)
                raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
                self.keys[hashlib.sha256(raw).hexdigest()[:32]] = key
        self.witnesses = [Path(w) for w in witnesses]
        self.findings: list[Finding] = []
        # chain -> seq -> hash of the record the chain holds there; chain -> highest seq
        self.hashes: dict[str, dict[int, str]] = {}
        self.last: dict[str, int] = {}
        self.genesis: dict[str, str] = {}
        self.policy_keys: dict[str, str | None] = {}  # chain -> the key_id its genesis policy names

    def add(self, kind: str, chain_id: str | None, seq: int | None, detail: str = "", severity: str = "error") -> None:
        self.findings.append(Finding(kind, severity, chain_id, seq, detail))

    def run(self, conn: psycopg.Connection | None = None) -> list[Finding]:
        """Verify in ``conn``'s open transaction (which may hold a test's uncommitted tampering), or in a
        REPEATABLE READ transaction of a new connection to the DSN."""
        if conn is not None:
            self._run(conn)
            return self.findings
        with psycopg.connect(self.dsn) as own:
            own.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._run(own)
        return self.findings

    def _run(self, conn: psycopg.Connection) -> None:
        version = 0
        if conn.execute("SELECT to_regclass('otel_audit_schema')").fetchone()[0] is not None:
            version = conn.execute("SELECT coalesce(max(version), 0) FROM otel_audit_schema").fetchone()[0]
        registered = self._registry(conn)
        chains = set(registered)
        chains |= {
            r[0] for r in conn.execute("SELECT DISTINCT chain_id::text FROM audit_logs WHERE chain_id IS NOT NULL")
        }
        quarantine: dict[str, list[tuple]] = {}
        for row in conn.execute("SELECT chain_id::text, seq, hash, canonical, reason FROM audit_quarantine"):
            quarantine.setdefault(row[0], []).append(row[1:])
        chains |= set(quarantine)
        for chain_id in sorted(chains - set(registered)):
            self.add("unregistered_chain", chain_id, None)
        (nulls,) = conn.execute("SELECT count(*) FROM audit_logs WHERE chain_id IS NULL").fetchone()
        if nulls:
            self.add("inserted", None, None, f"{nulls} row(s) without a chain")
        for chain_id in sorted(chains):
            self._walk(conn, chain_id, registered.get(chain_id), quarantine.get(chain_id, []))
        has_table = conn.execute("SELECT to_regclass('audit_checkpoints')").fetchone()[0] is not None
        if not has_table and version >= 2:
            self.add("checkpoint_missing", None, None, "audit_checkpoints dropped")
        if self.keys is not None or self.witnesses:
            rows = (
                list(
                    conn.execute(
                        f"SELECT chain_id::text, n, seq, head, to_char(signed_at AT TIME ZONE 'UTC', {TS}), key_id, closed, "
                        "body, signature, hash FROM audit_checkpoints ORDER BY chain_id, n"
                    )
                )
                if has_table
                else []
            )
            self._anchoring(rows, registered, chains)

    # -------------------------------------------------------------- "The genesis document and audit_chains"
    def _registry(self, conn: psycopg.Connection) -> dict[str, str]:
        out: dict[str, str] = {}
        for chain_id, genesis, stored_hash, emitter, created_at in conn.execute(
            f"SELECT chain_id::text, genesis, genesis_hash, emitter::text, "
            f"to_char(created_at AT TIME ZONE 'UTC', {TS}) FROM audit_chains"
        ):
            genesis = bytes(genesis)
            computed = hashlib.sha256(CHAIN_DOMAIN + genesis).hexdigest()
            out[chain_id] = computed
            try:
                doc = load_exact(genesis)
            except ValueError:
                doc = None
            if computed != stored_hash or not isinstance(doc, dict) or doc.get("chain_id") != chain_id:
                self.add("genesis_modified", chain_id, 0)
                continue
            if created_at != doc.get("created"):
                self.add("registry_mismatch", chain_id, 0, "created_at")
            if not json_equal(doc.get("emitter", {}), load_exact(emitter)):
                self.add("registry_mismatch", chain_id, 0, "emitter")
            policy = doc.get("checkpoints")
            if isinstance(policy, dict) and "key_id" in policy:  # "Key rule"
                self.policy_keys[chain_id] = policy["key_id"]
        self.genesis = out
        return out

    # -------------------------------------------------------------- "The walk"
    def _walk(self, conn: psycopg.Connection, chain_id: str, genesis: str | None, quarantined: list[tuple]) -> None:
        columns = [
            "seq",
            "hash",
            "canonical",
            "id::text",
            "chain_id::text",
            f"to_char(timestamp AT TIME ZONE 'UTC', {TS})",
            "abbrev(ip_address)",
            "format_version",
            "trace_flags",
            "severity_number",
            "changed_fields",
            "array_dims(changed_fields)",
            "problems",
            "array_dims(problems)",
            "old_values::text",
            "attributes::text",
            *TEXT_COLUMNS,
        ]
        placed: dict[int, _Entry] = {}
        query = f'SELECT {", ".join(columns)} FROM audit_logs WHERE chain_id = %s ORDER BY seq, hash COLLATE "C"'
        for row in conn.execute(query, (chain_id,)):
            self._row(chain_id, row, placed)
        hidden: dict[int, _Entry] = {}
        for seq_column, stored_hash, canonical, _reason in quarantined:
            canonical = bytes(canonical)
            computed = hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest()
            try:
                doc = load_exact(canonical)
                pos = doc["seq"]
                assert type(pos) is int
            except Exception:
                self.add("malformed", chain_id, seq_column)
                continue
            if doc.get("chain_id") != chain_id:
                self.add("reordered", chain_id, seq_column)
                continue
            if seq_column != pos:
                self.add("reordered", chain_id, seq_column)
            if computed != stored_hash:
                self.add("modified", chain_id, pos)
            if pos in placed:
                if placed[pos].link != computed:
                    self.add("inserted", chain_id, pos, "refused contender", severity="warning")
                continue
            hidden[pos] = _Entry(pos, computed, doc.get("prev_hash"), quarantined=True)
        for pos, entry in hidden.items():
            placed[pos] = entry
            self.add("record_hidden", chain_id, pos)
        if hidden:
            self.add("quarantined", chain_id, None, severity="info")
        self._links(chain_id, genesis, placed)

    def _row(self, chain_id: str, row: tuple, placed: dict[int, _Entry]) -> None:
        (
            seq_column,
            stored_hash,
            canonical,
            id_,
            chain_column,
            timestamp,
            ip,
            version,
            flags,
            severity,
            changed,
            changed_dims,
            problems,
            problems_dims,
            old_text,
            attributes_text,
            *texts,
        ) = row
        canonical = bytes(canonical)
        try:
            doc = load_exact(canonical)
            ok = isinstance(doc, dict) and set(doc) <= set(RECORD_FIELDS) and type(doc.get("seq")) is int
        except ValueError:
            ok = False
        if not ok:
            self.add("malformed", chain_id, seq_column)
            self._place(chain_id, placed, _Entry(seq_column, stored_hash, None))
            return
        pos = doc["seq"]
        computed = hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest()
        if computed != stored_hash:
            self.add("modified", chain_id, pos, "bytes")
            self._place(chain_id, placed, _Entry(pos, stored_hash, doc.get("prev_hash")))
            return
        same = {
            "id": id_ == doc.get("id"),
            "timestamp": timestamp == doc.get("timestamp"),
            "ip_address": inet_equal(doc.get("ip_address"), ip),
            "format_version": int_equal(doc.get("v"), version),
            "trace_flags": int_equal(doc.get("trace_flags"), flags),
            "severity_number": int_equal(doc.get("severity_number"), severity),
            "changed_fields": array_equal(doc.get("changed_fields"), changed, changed_dims),
            "problems": array_equal(doc.get("problems"), problems, problems_dims),
            "old_values": (old_text is None) == ("old_values" not in doc)
            and (old_text is None or json_equal(doc["old_values"], load_exact(old_text))),
            "attributes": (attributes_text is None) == ("attributes" not in doc)
            and (attributes_text is None or json_equal(doc["attributes"], load_exact(attributes_text))),
        }
        same.update({name: value == doc.get(name) for name, value in zip(TEXT_COLUMNS, texts)})
        for name, equal in same.items():
            if not equal:
                self.add("modified", chain_id, pos, f"column {name}")
        if seq_column != pos or chain_column != doc.get("chain_id"):
            self.add("reordered", chain_id, seq_column)
        if doc.get("chain_id") != chain_id:
            return
        self._place(chain_id, placed, _Entry(pos, computed, doc.get("prev_hash")))

    def _place(self, chain_id: str, placed: dict[int, _Entry], entry: _Entry) -> None:
        if entry.pos in placed:
            self.add("inserted", chain_id, entry.pos, "second row for the position")
        else:
            placed[entry.pos] = entry

    def _links(self, chain_id: str, genesis: str | None, placed: dict[int, _Entry]) -> None:
        positions = sorted(placed)
        expected = 1
        for pos in positions:
            if pos > expected:
                self.add("missing", chain_id, expected, f"{pos - expected} record(s)")
            expected = pos + 1
        last = positions[-1] if positions else 0
        for pos in positions:
            entry = placed[pos]
            if pos == 1:
                link = genesis
            elif pos - 1 in placed:
                link = placed[pos - 1].link
            else:
                link = None  # after a gap the link is not judged
            if link is not None and entry.prev is not None and entry.prev != link:
                self.add("inserted" if pos == last else "broken_link", chain_id, pos)
        self.hashes[chain_id] = {pos: e.link for pos, e in placed.items()}
        self.last[chain_id] = last

    # -------------------------------------------------------------- "Checkpoints, keys and proofs"
    def _checkpoint_body(self, body: bytes) -> dict | None:
        try:
            cp = json.loads(body)
        except ValueError:
            return None
        members = {
            "v",
            "type",
            "chain_id",
            "n",
            "seq",
            "head",
            "genesis",
            "prev",
            "time",
            "interval_ms",
            "closed",
            "key_id",
        }
        if not isinstance(cp, dict) or not members <= set(cp) or cp.get("type") != "checkpoint":
            return None
        return cp

    def _signed(self, cp: dict, body: bytes, signature: bytes) -> str | None:
        """None when valid under a trusted key, else the finding kind."""
        if self.keys is None:
            return None
        key = self.keys.get(cp["key_id"])
        if key is None:
            return "untrusted_key"
        try:
            key.verify(signature, CHECKPOINT_DOMAIN + body)
        except InvalidSignature:
            return "bad_signature"
        return None

    def _anchoring(self, rows: list[tuple], registered: dict[str, str], chains: set[str]) -> None:
        by_chain: dict[str, dict[int, dict]] = {}
        bodies: dict[tuple[str, int], bytes] = {}
        for chain_id, n, seq, head, signed_at, key_id, closed, body, signature, stored_hash in rows:
            body, signature = bytes(body), bytes(signature)
            cp = self._checkpoint_body(body)
            if cp is None or cp["chain_id"] != chain_id or cp["n"] != n:
                self.add("checkpoint_malformed", chain_id, seq)
                continue
            projection = (
                cp["seq"],
                cp["head"],
                cp["time"],
                cp["key_id"],
                cp["closed"],
                hashlib.sha256(CHECKPOINT_DOMAIN + body).hexdigest(),
            )
            if projection != (seq, head, signed_at, key_id, closed, stored_hash):
                self.add("checkpoint_malformed", chain_id, seq)
                continue
            problem = self._signed(cp, body, signature)
            if problem is not None:
                self.add(problem, chain_id, seq)
                continue
            by_chain.setdefault(chain_id, {})[n] = cp
            bodies[(chain_id, n)] = body
        witnessed: dict[str, dict[int, bytes]] = {}
        for directory in self.witnesses:
            for path in sorted(directory.glob("*/*.checkpoint")):
                lines = path.read_bytes().split(b"\n")
                if len(lines) < 2:
                    continue
                cp = self._checkpoint_body(lines[0])
                if cp is None:
                    continue
                witnessed.setdefault(cp["chain_id"], {})[cp["n"]] = lines[0]
        for chain_id in sorted(chains | set(by_chain) | set(witnessed)):
            cps = by_chain.get(chain_id, {})
            for n, body in sorted(witnessed.get(chain_id, {}).items()):
                if (chain_id, n) in bodies:
                    if bodies[(chain_id, n)] != body:
                        self.add("checkpoint_mismatch", chain_id, None)
                elif n > max(cps, default=0):
                    self.add("rolled_back", chain_id, None)
                    cps.setdefault(n, json.loads(body))
                else:
                    self.add("checkpoint_missing", chain_id, None)
            if self.keys is None:
                continue
            if chain_id not in chains:
                if cps:
                    self.add("chain_deleted", chain_id, None)
                continue
            if not cps:
                self.add("unanchored", chain_id, None, "no trusted checkpoint")
                continue
            numbers = sorted(cps)
            if numbers != list(range(1, numbers[-1] + 1)):
                self.add("checkpoint_missing", chain_id, None)
            hashes = self.hashes.get(chain_id, {})
            for n in numbers:
                cp = cps[n]
                signer = cp.get("adopted_by", {}).get("chain_id") if cp.get("adopted_by") else chain_id
                if signer in self.policy_keys and cp["key_id"] != self.policy_keys[signer]:
                    self.add("wrong_key", chain_id, cp["seq"])
                if cp["genesis"] != registered.get(chain_id):
                    self.add("checkpoint_inconsistent", chain_id, cp["seq"])
                want = registered.get(chain_id) if cp["seq"] == 0 else hashes.get(cp["seq"])
                if cp["seq"] > self.last.get(chain_id, 0):
                    self.add("truncated", chain_id, cp["seq"])
                elif want is not None and want != cp["head"]:
                    self.add("rewritten", chain_id, cp["seq"])
            newest = cps[numbers[-1]]
            if newest["closed"] and self.last.get(chain_id, 0) > newest["seq"]:
                self.add("inserted", chain_id, newest["seq"] + 1, "after the closing checkpoint")


def verify(
    dsn: str, trusted_keys: Iterable[Path] = (), witnesses: Iterable[Path] = (), conn: psycopg.Connection | None = None
) -> list[Finding]:
    return StrangerVerifier(dsn, list(trusted_keys), list(witnesses)).run(conn)


def exit_code(findings: list[Finding], *, strict: bool = False) -> int:
    bad = {"error"} | ({"warning"} if strict else set())
    return 1 if any(f.severity in bad for f in findings) else 0
