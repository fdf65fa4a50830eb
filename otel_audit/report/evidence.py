"""The evidence pack (``otel-audit evidence --out pack.zip``): what an auditor takes away and checks offline.

One zip file holding:

``README.txt``            what the pack is and how to check it offline, step by step
``report.html``           the report of the period (:mod:`otel_audit.report.html`)
``report.json``           the same data as JSON
``records.json``          the records chosen (by a query), every column
``proofs/<id>.json``      a record proof per chosen record (``otel-audit prove``'s format)
``checkpoints/<chain>/<n>.checkpoint``
                          each signed checkpoint a proof rests on (body, newline, base64 signature)
``keys/<key id>.pub``     the public keys given with ``--trusted-key`` (copies: the auditor should
                          get the keys from their owners and compare the key ids)
``archive/manifests/...`` the signed manifests of the archive given with ``--archive`` (and, in
                          MANIFEST.json, which chosen records its runs hold): :func:`archive_manifests`
``check_proof.py``        an independent proof checker (standard library and ``cryptography``)
``MANIFEST.json``         pack metadata, the selection, records that could not be proven and why,
                          and the SHA-256 of every other file
``SHA256SUMS``            the same hashes for ``sha256sum -c``

The pack only reads the database. Proofs are built by :func:`otel_audit.verify.prove.prove_record`
and checked before they are written (with the trusted keys when given).
"""

from __future__ import annotations

import hashlib
import importlib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg

from otel_audit import __version__
from otel_audit.core.checkpoint import CheckpointFormatError, parse_checkpoint
from otel_audit.core.keys import VerifyKey, load_trusted_key
from otel_audit.errors import InvalidInput
from otel_audit.query import WIDE_COLUMNS, RecordFilter, find_records
from otel_audit.report.collect import ReportOptions, build_report
from otel_audit.report.html import render_html
from otel_audit.verify.prove import NotAnchoredError, ProofUnavailable, prove_record

__all__ = ["CHECK_PROOF_PY", "EvidenceOptions", "EvidenceSummary", "archive_manifests", "write_evidence_pack"]

PACK_FORMAT = "otel-audit.evidence-pack.v1"


@dataclass
class EvidenceOptions:
    report: ReportOptions = field(default_factory=ReportOptions)
    #: the records to prove: those matching any of these filters
    selections: Sequence[RecordFilter] = field(default_factory=lambda: [RecordFilter()])
    limit: int = 100  # at most this many records proven
    trusted_key_files: Sequence[str] = ()
    #: an archive location (directory or s3://bucket/prefix) whose signed manifests to include
    archive: str | None = None


@dataclass
class EvidenceSummary:
    path: Path
    records: int  # chosen
    matching: int  # that matched the selection (records beyond the limit are not in the pack)
    selection: str
    proofs: int
    unproven: list[dict[str, str]]
    checkpoints: int
    keys: int
    archive_manifests: int
    archive_note: str | None
    verdict: str
    exit_code: int
    sha256: str  # of the zip file
    files: int


def write_evidence_pack(conn: psycopg.Connection, out: Path, options: EvidenceOptions) -> EvidenceSummary:
    """Write the pack to ``out`` (replaced atomically: written beside it, then renamed)."""
    if options.limit < 1:
        raise InvalidInput(f"limit must be at least 1, not {options.limit}")
    keys = _keys(options.trusted_key_files)
    report = build_report(conn, options.report)
    chosen, matching = _choose(conn, options.selections, options.limit)
    selection = "; or ".join(s.describe() for s in options.selections)
    files: dict[str, bytes] = {}
    files["report.html"] = render_html(report).encode("utf-8")
    files["report.json"] = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    files["records.json"] = orjson.dumps(
        {"selection": selection, "matching": matching, "included": len(chosen), "records": chosen},
        option=orjson.OPT_INDENT_2,
        default=str,
    )
    proofs, unproven, checkpoints = _proofs(conn, chosen, options.report.trusted_keys)
    for record_id, proof in proofs.items():
        files[f"proofs/{record_id}.json"] = orjson.dumps(proof, option=orjson.OPT_INDENT_2) + b"\n"
    for (chain_id, n), envelope in sorted(checkpoints.items()):
        files[f"checkpoints/{chain_id}/{n:012d}.checkpoint"] = envelope
    for key_id, (path, pem) in sorted(keys.items()):
        files[f"keys/{key_id}.pub"] = pem
    manifests, archive_note, archived = archive_manifests(options.archive, chosen)
    for name, data in manifests.items():
        files[f"archive/manifests/{name}"] = data
    files["check_proof.py"] = CHECK_PROOF_PY.encode("utf-8")
    verification = report["verification"]
    meta = {
        "format": PACK_FORMAT,
        "generator": f"otel-audit {__version__}",
        "generated_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "period": report["period"],
        "database": report["database"],
        "verdict": verification["verdict"],
        "verify_exit_code": verification["exit_code"],
        "trusted_keys": sorted(keys),
        "signatures_checked": options.report.trusted_keys is not None,
        "selection": selection,
        "records_matching": matching,
        "records_included": len(chosen),
        "proofs": sorted(proofs),
        "unproven": unproven,
        "archive": {
            "location": options.archive,
            "manifests": sorted(manifests),
            "note": archive_note,
            "records_archived": archived,
        },
    }
    files["README.txt"] = _readme(meta, report, proofs, unproven, keys).encode("utf-8")
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    meta["files"] = [{"path": name, "sha256": digest, "bytes": len(files[name])} for name, digest in sums.items()]
    files["MANIFEST.json"] = orjson.dumps(meta, option=orjson.OPT_INDENT_2, default=str)
    sums["MANIFEST.json"] = hashlib.sha256(files["MANIFEST.json"]).hexdigest()
    files["SHA256SUMS"] = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as pack:
        for name in ("README.txt", *sorted(n for n in files if n != "README.txt")):
            info = zipfile.ZipInfo(f"evidence/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            pack.writestr(info, files[name])
    tmp.replace(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return EvidenceSummary(
        path=out,
        records=len(chosen),
        matching=matching,
        selection=selection,
        proofs=len(proofs),
        unproven=unproven,
        checkpoints=len(checkpoints),
        keys=len(keys),
        archive_manifests=len(manifests),
        archive_note=archive_note,
        verdict=verification["verdict"],
        exit_code=verification["exit_code"],
        sha256=digest,
        files=len(files),
    )


def _choose(
    conn: psycopg.Connection, selections: Sequence[RecordFilter], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The records matching any selection (each once, in time order), at most ``limit``, and how many matched."""
    chosen: dict[tuple[str, int], dict[str, Any]] = {}
    matching = 0
    for selection in selections:
        result = find_records(conn, selection, limit=limit, columns=WIDE_COLUMNS, ascending=True)
        matching += result.total or 0
        for row in result.as_dicts():
            chosen.setdefault((str(row["chain_id"]), int(row["seq"])), row)
    rows = sorted(chosen.values(), key=lambda r: (str(r["timestamp"]), str(r["chain_id"]), int(r["seq"])))
    return rows[:limit], matching


def _keys(paths: Sequence[str]) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    for path in paths:
        key: VerifyKey = load_trusted_key(path)
        out.setdefault(key.key_id, (str(path), Path(path).read_bytes()))
    return out


def _proofs(
    conn: psycopg.Connection, records: Sequence[Mapping[str, Any]], trusted: Mapping[str, VerifyKey] | None
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]], dict[tuple[str, int], bytes]]:
    proofs: dict[str, dict[str, Any]] = {}
    unproven: list[dict[str, str]] = []
    checkpoints: dict[tuple[str, int], bytes] = {}
    for record in records:
        record_id = record.get("id")
        if not record_id:
            unproven.append(
                {
                    "record": f"chain {record.get('chain_id')} seq {record.get('seq')}",
                    "reason": "the record has no id (a quarantined document without one)",
                }
            )
            continue
        try:
            proof, result = prove_record(conn, str(record_id), trusted_keys=trusted)
        except NotAnchoredError as exc:
            unproven.append({"record": str(record_id), "reason": str(exc)})
            continue
        except ProofUnavailable as exc:
            unproven.append({"record": str(record_id), "reason": str(exc)})
            continue
        proofs[str(record_id)] = proof
        cp = result.checkpoint
        if cp is not None:
            try:
                body = proof["checkpoint"].encode("utf-8")
                parse_checkpoint(body, _b64decode(proof["signature"]))
            except (CheckpointFormatError, ValueError):
                continue
            checkpoints[(cp.chain_id, cp.n)] = body + b"\n" + proof["signature"].encode("ascii") + b"\n"
    return proofs, unproven, checkpoints


def _b64decode(text: str) -> bytes:
    import base64

    return base64.b64decode(text, validate=True)


def archive_manifests(
    location: str | None, records: Sequence[Mapping[str, Any]] = ()
) -> tuple[dict[str, bytes], str | None, dict[str, str]]:
    """The signed manifests of the archive at ``location`` (file name -> bytes as stored), a note for the
    README, and which of ``records`` an archive run holds (record id -> manifest file name).

    Needs the archive support (``pip install 'otel-audit[archive]'``); without it, or without
    ``location``, the pack says that archived records are not covered. The manifests are copied as
    stored, whatever their state: ``otel-audit verify-archive`` judges them (and a pack whose
    manifests do not chain says so in its note).
    """
    if location is None:
        return (
            {},
            "no archive was given (--archive): records archived out of PostgreSQL are not covered by this pack",
            {},
        )
    try:
        archive: Any = importlib.import_module("otel_audit.archive")
        importlib.import_module("pyarrow")
    except ImportError:
        return (
            {},
            (
                f"an archive was given ({location}) but this otel-audit has no archive support installed "
                "(pip install 'otel-audit[archive]'): its manifests are not in this pack"
            ),
            {},
        )
    try:
        store = archive.open_store(location, require_lock=False)
        names = store.list("manifests/")
        out = {name.rsplit("/", 1)[-1]: store.get(name) for name in names}
    except Exception as exc:  # any store error becomes the note: the pack is still written
        return {}, f"the archive at {location} could not be read ({exc}): its manifests are not in this pack", {}
    if not out:
        return {}, f"the archive at {location} holds no manifest (nothing archived yet, or not an archive)", {}
    held: dict[str, str] = {}
    try:
        manifests = archive.load_manifests(store)
    except Exception as exc:
        note = (
            f"{len(out)} manifest(s) of the archive at {location}, which do NOT chain ({exc}); run "
            "`otel-audit verify-archive` on the archive"
        )
        return out, note, held
    for manifest in manifests:
        name = next((n for n, data in out.items() if data.startswith(manifest.body)), None)
        for entry in manifest.doc["chains"]:
            for record in records:
                if (
                    str(record.get("chain_id")) == entry["chain_id"]
                    and entry["first_seq"] <= int(record["seq"]) <= entry["last_seq"]
                    and name
                    and record.get("id")
                ):
                    held[str(record["id"])] = name
    note = (
        f"{len(out)} signed manifest(s) of the archive at {location}; {len(held)} of the chosen records are "
        f"in its runs. Check the archive with `otel-audit verify-archive {location} --trusted-key ...`"
    )
    return out, note, held


def _readme(
    meta: Mapping[str, Any],
    report: Mapping[str, Any],
    proofs: Mapping[str, Any],
    unproven: Sequence[Mapping[str, str]],
    keys: Mapping[str, tuple[str, bytes]],
) -> str:
    v = report["verification"]
    db = report["database"]
    key_args = " ".join(f"--trusted-key keys/{k}.pub" for k in sorted(keys)) or "--trusted-key EMITTER.pub"
    lines = [
        "otel-audit evidence pack",
        "========================",
        "",
        f"Written by {meta['generator']} at {meta['generated_at']} from database {db['database']} (schema "
        f"{db['schema']}) on {db['host']}.",
        f"Period: {report['period']['since']} to {report['period']['until']} (UTC, end excluded).",
        f"Verification verdict (whole database): {v['verdict']} - {v['records']:,} records, {v['errors']} error(s), "
        f"{v['warnings']} warning(s); `otel-audit verify` exit code {v['exit_code']}.",
        "Checkpoint signatures were "
        + (
            f"checked against the trusted key(s) {', '.join(v['trusted_keys']) or '(none)'}."
            if v["signatures_checked"]
            else "NOT checked: no trusted key was given when this pack was written."
        ),
        f"Records chosen: {meta['selection']} - {meta['records_matching']:,} matched, {meta['records_included']:,} "
        f'included, {len(proofs):,} proven, {len(unproven):,} without a proof (see MANIFEST.json, "unproven").',
        f"Archive: {meta['archive']['note']}",
        "",
        "What is in it",
        "-------------",
        "report.html       the report (open in any browser; it loads nothing and runs no script)",
        "report.json       the same data as JSON",
        "records.json      the chosen records, every column",
        "proofs/           one record proof per chosen record: the record's sealed bytes, those of every record",
        "                  up to the next signed checkpoint, and that checkpoint with its signature",
        "checkpoints/      the signed checkpoints the proofs rest on (body, newline, base64 signature)",
        "keys/             copies of the public keys given to `otel-audit evidence --trusted-key`",
        "archive/          signed archive manifests, where an archive was given",
        "check_proof.py    an independent proof checker (Python standard library + `cryptography`)",
        "MANIFEST.json     metadata, the selection, unproven records and why, SHA-256 of every file",
        "SHA256SUMS        the same hashes, for `sha256sum -c`",
        "",
        "How to check it offline",
        "-----------------------",
        "1. The pack is complete and unchanged:",
        "       cd evidence && sha256sum -c SHA256SUMS",
        "   (compare the SHA-256 of the zip file with the one the sender told you out of band.)",
        "",
        "2. The public keys are the emitters' keys. Get each key (or its key id) from its owner through a",
        "   channel you trust, not from this pack; the key id is the first 32 hex digits of the SHA-256 of",
        "   the raw 32-byte Ed25519 public key:",
        "       openssl pkey -pubin -in keys/KEY_ID.pub -outform DER | tail -c 32 | sha256sum | cut -c1-32",
        "",
        "3. Each record proof shows that the record is part of a chain signed by a trusted key:",
        f"       otel-audit verify-proof proofs/RECORD_ID.json {key_args}",
        "   all of them:",
        f'       for p in proofs/*.json; do otel-audit verify-proof "$p" {key_args} >/dev/null || echo "INVALID $p"; done',
        "   or without otel-audit (only Python and the `cryptography` package):",
        "       python3 check_proof.py proofs/RECORD_ID.json keys/KEY_ID.pub",
        "   The checker implements the proof rules of the otel-audit specification (docs/specification.md,",
        '   "The record proof"); a proof is valid when the checkpoint\'s signature verifies under a key you',
        "   trust and the records' hashes link from the proven record to the checkpoint's head.",
        "",
        "4. The verdict of the report is the one `otel-audit verify` gives on the database; to see it",
        '   yourself you need read access to the database (report.html, "Re-run every check yourself").',
        "",
        "What a proof does not show: that no record is missing elsewhere in the trail (the verification",
        "does), or anything about records after the checkpoint it rests on. A proof also discloses the",
        "records between the proven one and its checkpoint to whoever receives it.",
        "",
    ]
    return "\n".join(lines)


#: The checker shipped in every pack (the specification's independent checker, accepting checkpoint
#: body versions 1 and 2). Tested against real proofs in tests/test_report_evidence.py.
CHECK_PROOF_PY = '''#!/usr/bin/env python3
"""Check an otel-audit record proof with nothing but Python and `cryptography`.

    python3 check_proof.py PROOF.json TRUSTED.pub [TRUSTED2.pub ...]

Exit 0 valid, 1 invalid. The rules are those of the otel-audit specification
("The record proof"): the checkpoint is signed by a trusted Ed25519 key, and the
records' hashes link from the proven record to the checkpoint's head.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

RECORD, CHECKPOINT = b"otel-audit.record.v1\\x00", b"otel-audit.checkpoint.v1\\x00"


def need(condition, problem):
    if not condition:  # not `assert`: python -O would skip it
        raise ValueError(problem)


def check(proof_path, key_paths):
    keys = {}
    for path in key_paths:
        key = load_pem_public_key(open(path, "rb").read())
        keys[hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:32]] = key
    proof = json.load(open(proof_path, encoding="utf-8"))
    need(proof.get("format") == "otel-audit-record-proof" and proof.get("v") == 1, "not a record proof")
    body = proof["checkpoint"].encode("utf-8")
    cp = json.loads(body)
    need(cp.get("type") == "checkpoint" and cp.get("v") in (1, 2), "not a checkpoint")
    need(cp["chain_id"] == proof["chain_id"], "the checkpoint is of another chain")
    need(cp["key_id"] in keys, "signed by a key you did not trust: " + str(cp["key_id"]))
    keys[cp["key_id"]].verify(base64.b64decode(proof["signature"], validate=True), CHECKPOINT + body)
    previous = None
    for i, text in enumerate(proof["records"]):
        data = text.encode("utf-8")
        record = json.loads(data)
        need(record["chain_id"] == cp["chain_id"] and record["seq"] == proof["seq"] + i, "records out of place")
        if i == 0:
            need(record["id"] == proof["record_id"], "the first record is not the proven one")
        else:
            need(record["prev_hash"] == previous, "record %d does not link" % record["seq"])
        previous = hashlib.sha256(RECORD + data).hexdigest()
    need(proof["records"], "no records")
    need(proof["seq"] + len(proof["records"]) - 1 == cp["seq"], "the records do not reach the checkpoint")
    need(previous == cp["head"], "the last record is not the checkpoint's head")
    return json.loads(proof["records"][0]), cp


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    try:
        record, cp = check(sys.argv[1], sys.argv[2:])
    except Exception as exc:  # any failure means: not valid
        print("INVALID:", type(exc).__name__, exc)
        sys.exit(1)
    print("VALID: record %s (chain %s, seq %s) is covered by checkpoint %s signed by key %s" % (
        record["id"], cp["chain_id"], record["seq"], cp["n"], cp["key_id"]))
    print(json.dumps(record, ensure_ascii=True, sort_keys=True))
'''
