"""``otel-audit verify-archive``: check an archive offline, trusting only the keys given.

Checked, in this order:

1. **Manifests**: each parses, is signed by a trusted key, is named for its
   run, runs are numbered 1, 2, 3... without gaps, each names the hash of the
   one before (``prev``) and the same archive id, and each one's cumulative
   ``state`` is the previous state plus its own chain ranges.
2. **Files**: every file a manifest lists exists with the signed SHA-256 and
   size; every other object (but plans) is reported, naming it: added by
   someone, or left by an interrupted run (a warning while that run's plan
   says so: rerun ``otel-audit archive`` to finish it).
3. **Records**, in every bundle (worker processes, one bundle each): every
   hash recomputed from the sealed bytes, every queryable column equal to the
   sealed field, sequence numbers and links continuous within the bundle and
   exactly the chain ranges the manifest lists.
4. **Chains**: the ranges join across bundles and runs into one chain per
   chain id, from a genesis document whose hash record 1 links to.
5. **Checkpoints**: each signed by a trusted key, numbered without gaps with
   ``prev`` links, naming the chain's genesis, and each head equal to the
   hash of the archived record at its sequence number; records after the
   newest checkpoint are reported as unanchored.
6. With a database (``--dsn``): where the archive ends and the live records
   begin, per chain, the two agree (the same hash where they overlap, the
   next live record links to the newest archived one, no gap between them).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from otel_audit.archive.format import (
    RECORD_COLUMNS,
    Manifest,
    ManifestError,
    checkpoints_schema,
    derive_columns,
    manifest_name,
    parse_manifest,
    records_schema,
    run_of_manifest_name,
)
from otel_audit.archive.store import ArchiveStore, sha256_hex
from otel_audit.core.chain import genesis_hash
from otel_audit.core.checkpoint import CheckpointFormatError, SignatureStatus, parse_checkpoint
from otel_audit.core.keys import VerifyKey
from otel_audit.core.record import record_hashes
from otel_audit.verify.report import ChainSummary, Finding, Kind, Severity, VerificationReport

__all__ = ["verify_archive"]

_E, _W, _I = Severity.ERROR, Severity.WARNING, Severity.INFO
#: Fewer records than this are checked in this process.
PARALLEL_FROM = 100_000


@dataclass
class _Segment:
    chain_id: str
    first_seq: int
    first_prev: str | None
    last_seq: int
    last_hash: str
    rows: int


@dataclass
class _BundleResult:
    path: str
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    observed: dict[str, dict[int, str]] = field(default_factory=dict)


@dataclass
class _Listed:
    manifest: Manifest
    entry: dict[str, Any]


def verify_archive(
    store: ArchiveStore,
    trusted_keys: Mapping[str, VerifyKey],
    *,
    conn: Any = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerificationReport:
    started = time.monotonic()
    report = VerificationReport(
        checks=[
            f"manifest signatures ({len(trusted_keys)} trusted key(s))",
            "file digests",
            "record hashes",
            "columns against sealed bytes",
            "sequence",
            "links",
            "checkpoints",
        ]
    )
    objects = store.list()
    manifests = _check_manifests(store, objects, trusted_keys, report)
    listed = _check_listing(objects, manifests, report)
    # Checkpoints first: their sequence numbers are the positions whose hashes the record check collects.
    checkpoints = _load_checkpoints(store, listed, trusted_keys, report)
    watch = {c: frozenset(cp["seq"] for cp in cps) for c, cps in checkpoints.items()}
    tasks = [
        (
            store,
            item.entry["path"],
            item.entry["sha256"],
            item.entry["bytes"],
            item.entry["chains"],
            {c: watch.get(c, frozenset()) for c, _, _ in item.entry["chains"]},
        )
        for item in listed
        if item.entry["kind"] == "records"
    ]
    total = sum(item.entry["rows"] for item in listed if item.entry["kind"] == "records")
    count = workers or (_default_workers() if total >= PARALLEL_FROM else 1)
    results: dict[str, _BundleResult] = {}
    for result in _run(tasks, count):
        results[result.path] = result
        for finding in result.findings:
            report.add(finding)
        if progress is not None:
            progress(result.rows)
    _join_chains(manifests, listed, results, checkpoints, report)
    if conn is not None:
        _join_database(conn, manifests, trusted_keys, report)
        report.checks.append("join with the live database")
    report.records = sum(r.rows for r in results.values())
    report.duration_seconds = time.monotonic() - started
    return report


# ------------------------------------------------------------------------------------------------ manifests
def _check_manifests(
    store: ArchiveStore, objects: list[str], trusted: Mapping[str, VerifyKey], report: VerificationReport
) -> list[Manifest]:
    good: dict[int, Manifest] = {}
    manifest: Manifest | None
    for path in objects:
        if not path.startswith("manifests/"):
            continue
        run = run_of_manifest_name(path)
        if run is None:
            report.add(
                Finding(
                    Kind.BUNDLE_UNLISTED,
                    _E,
                    None,
                    None,
                    f"{path}: not a manifest name (manifests/NNNNNN.manifest): added by someone",
                )
            )
            continue
        try:
            manifest = parse_manifest(store.get(path))
        except (ManifestError, UnicodeDecodeError) as exc:
            report.add(Finding(Kind.MANIFEST_INVALID, _E, None, None, f"{path} is not a valid manifest: {exc}"))
            continue
        if manifest.run != run:
            report.add(
                Finding(
                    Kind.MANIFEST_INVALID,
                    _E,
                    None,
                    None,
                    f"{path} holds the manifest of run {manifest.run}: renamed or reordered",
                )
            )
            continue
        status = manifest.signature_valid(trusted)
        if status is None:
            report.add(
                Finding(
                    Kind.UNTRUSTED_KEY,
                    _E,
                    None,
                    None,
                    f"{path} is signed by key {manifest.key_id}, which is not among the trusted keys "
                    "(add the archive key's public key with --trusted-key)",
                )
            )
            continue
        if not status:
            report.add(
                Finding(
                    Kind.BAD_SIGNATURE,
                    _E,
                    None,
                    None,
                    f"{path}: the signature does not verify under trusted key {manifest.key_id}: the "
                    "manifest was altered or forged",
                )
            )
            continue
        good[run] = manifest
    if not good:
        if not any(p.startswith("manifests/") for p in objects):
            report.add(
                Finding(
                    Kind.MANIFEST_MISSING,
                    _E,
                    None,
                    None,
                    f"{store.description} holds no manifest: not an otel-audit archive, or every manifest was deleted",
                )
            )
        return []
    runs = sorted(good)
    chain: list[Manifest] = []
    archive_id = good[runs[0]].doc["archive_id"]
    previous: Manifest | None = None
    for run in range(1, runs[-1] + 1):
        manifest = good.get(run)
        if manifest is None:
            if manifest_name(run) not in objects:
                report.add(
                    Finding(
                        Kind.MANIFEST_MISSING,
                        _E,
                        None,
                        None,
                        f"{manifest_name(run)} is missing (runs {runs[0]}..{runs[-1]} are present): "
                        "a manifest was deleted, and the bundles it listed are unaccounted for",
                    )
                )
            previous = None
            continue
        if manifest.doc["archive_id"] != archive_id:
            report.add(
                Finding(
                    Kind.MANIFEST_INVALID,
                    _E,
                    None,
                    None,
                    f"{manifest_name(run)} belongs to archive {manifest.doc['archive_id']}, not "
                    f"{archive_id}: manifests of two archives mixed",
                )
            )
            continue
        if previous is not None:
            if manifest.doc["prev"] != previous.hash:
                report.add(
                    Finding(
                        Kind.MANIFEST_INVALID,
                        _E,
                        None,
                        None,
                        f"{manifest_name(run)} names {manifest.doc['prev']} as its predecessor, but "
                        f"{manifest_name(run - 1)} hashes to {previous.hash}: a manifest was replaced",
                    )
                )
            _check_state(previous, manifest, report)
        elif run == 1:
            _check_state(None, manifest, report)
        chain.append(manifest)
        previous = manifest
    return chain


def _check_state(previous: Manifest | None, manifest: Manifest, report: VerificationReport) -> None:
    state = {c: dict(v) for c, v in (previous.doc["state"]["chains"] if previous else {}).items()}
    records = previous.doc["state"]["records"] if previous else 0
    for entry in manifest.doc["chains"]:
        old = state.setdefault(entry["chain_id"], {"last_hash": None, "last_n": 0, "last_seq": 0})
        if entry["records"]:
            if entry["first_seq"] != old["last_seq"] + 1:
                report.add(
                    Finding(
                        Kind.MISSING,
                        _E,
                        entry["chain_id"],
                        old["last_seq"] + 1,
                        f"{manifest_name(manifest.run)} continues chain {entry['chain_id']} at seq "
                        f"{entry['first_seq']}, but the archive holds it up to {old['last_seq']}",
                    )
                )
            old["last_seq"], old["last_hash"] = entry["last_seq"], entry["last_hash"]
            records += entry["records"]
        if entry["checkpoints"] is not None:
            old["last_n"] = entry["checkpoints"][1]
    if state != manifest.doc["state"]["chains"] or records != manifest.doc["state"]["records"]:
        report.add(
            Finding(
                Kind.MANIFEST_INVALID,
                _E,
                None,
                None,
                f"{manifest_name(manifest.run)}: its cumulative state is not the previous state plus its "
                "own chain ranges",
            )
        )


def _check_listing(objects: list[str], manifests: list[Manifest], report: VerificationReport) -> list[_Listed]:
    present = set(objects)
    listed: list[_Listed] = []
    seen: set[str] = set()
    for manifest in manifests:
        for entry in manifest.doc["files"]:
            path = entry["path"]
            if path in seen:
                report.add(
                    Finding(
                        Kind.MANIFEST_INVALID,
                        _E,
                        None,
                        None,
                        f"{path} is listed by two manifests ({manifest_name(manifest.run)} again)",
                    )
                )
                continue
            seen.add(path)
            if path not in present:
                report.add(
                    Finding(
                        Kind.BUNDLE_MISSING,
                        _E,
                        None,
                        None,
                        f"{path} (listed in {manifest_name(manifest.run)}, {entry['rows']} rows) is missing: deleted",
                    )
                )
                continue
            listed.append(_Listed(manifest, entry))
    newest = manifests[-1].run if manifests else 0
    interrupted = {
        f"run={int(p[6:12]):06d}"
        for p in objects
        if p.startswith("plans/") and p[6:12].isdigit() and int(p[6:12]) > newest
    }
    for path in objects:
        if path in seen or path.startswith(("manifests/", "plans/")):
            continue
        parts = path.split("/")
        if len(parts) == 3 and parts[0] in ("records", "checkpoints") and parts[1] in interrupted:
            report.add(
                Finding(
                    Kind.BUNDLE_UNLISTED,
                    _W,
                    None,
                    None,
                    f"{path} was written by an interrupted archive run that has no manifest yet: rerun "
                    "`otel-audit archive` with the same destination to finish it (its records are not "
                    "part of the verified archive until then)",
                )
            )
        else:
            report.add(
                Finding(
                    Kind.BUNDLE_UNLISTED,
                    _E,
                    None,
                    None,
                    f"{path} is listed in no manifest: added to the archive by someone else",
                )
            )
    return listed


# ------------------------------------------------------------------------------------------------ checkpoints
def _load_checkpoints(
    store: ArchiveStore, listed: list[_Listed], trusted: Mapping[str, VerifyKey], report: VerificationReport
) -> dict[str, list[dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, list[dict[str, Any]]] = {}
    for item in listed:
        entry = item.entry
        if entry["kind"] != "checkpoints":
            continue
        path = entry["path"]
        data = store.get(path)
        if not _digest_ok(path, data, entry, report):
            continue
        try:
            table = pq.read_table(pa.BufferReader(data))  # no copy of the bundle's bytes
            if not table.schema.remove_metadata().equals(checkpoints_schema().remove_metadata()):
                raise ValueError("unexpected columns")
        except (pa.ArrowException, ValueError) as exc:
            report.add(Finding(Kind.BUNDLE_MODIFIED, _E, None, None, f"{path} is not a checkpoints bundle: {exc}"))
            continue
        expected_rows = {(c, n) for c, lo, hi in entry["chains"] for n in range(lo, hi + 1)}
        found_rows = set()
        for chain_id, n, seq, body, signature in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        ):
            where = f"{path}: checkpoint {n} of chain {chain_id}"
            try:
                cp = parse_checkpoint(body.encode("utf-8"), signature)
            except (CheckpointFormatError, UnicodeEncodeError) as exc:
                report.add(Finding(Kind.CHECKPOINT_MALFORMED, _E, chain_id, seq, f"{where} is malformed: {exc}"))
                continue
            if (cp.chain_id, cp.n, cp.seq) != (chain_id, n, seq):
                report.add(
                    Finding(
                        Kind.CHECKPOINT_MALFORMED,
                        _E,
                        chain_id,
                        seq,
                        f"{where}: the columns differ from the signed body (chain {cp.chain_id}, "
                        f"n {cp.n}, seq {cp.seq})",
                    )
                )
            status = cp.signature_status(trusted)
            if status is SignatureStatus.UNTRUSTED_KEY:
                report.add(
                    Finding(
                        Kind.UNTRUSTED_KEY,
                        _E,
                        cp.chain_id,
                        cp.seq,
                        f"{where} is signed by key {cp.key_id}, not among the trusted keys (give the "
                        "emitters' public keys too)",
                    )
                )
                continue
            if status is SignatureStatus.BAD_SIGNATURE:
                report.add(
                    Finding(
                        Kind.BAD_SIGNATURE,
                        _E,
                        cp.chain_id,
                        cp.seq,
                        f"{where}: the signature does not verify: altered or forged",
                    )
                )
                continue
            found_rows.add((cp.chain_id, cp.n))
            out.setdefault(cp.chain_id, []).append(
                {
                    "n": cp.n,
                    "seq": cp.seq,
                    "head": cp.head,
                    "genesis": cp.genesis,
                    "prev": cp.prev,
                    "hash": cp.hash,
                    "closed": cp.closed,
                    "where": where,
                }
            )
        if expected_rows - found_rows:
            missing = sorted(expected_rows - found_rows)[:3]
            report.add(
                Finding(
                    Kind.BUNDLE_MODIFIED,
                    _E,
                    missing[0][0],
                    None,
                    f"{path} lacks valid checkpoints its manifest lists (e.g. {missing})",
                )
            )
    for chain_id, cps in out.items():
        cps.sort(key=lambda c: c["n"])
        previous: dict[str, Any] | None = None
        for entry in cps:
            if previous is None:
                if entry["n"] != 1:
                    report.add(
                        Finding(
                            Kind.CHECKPOINT_MISSING,
                            _E,
                            chain_id,
                            entry["seq"],
                            f"the archive's checkpoints of this chain start at number {entry['n']}, not 1",
                        )
                    )
            elif entry["n"] != previous["n"] + 1:
                report.add(
                    Finding(
                        Kind.CHECKPOINT_MISSING,
                        _E,
                        chain_id,
                        entry["seq"],
                        f"checkpoints {previous['n'] + 1}..{entry['n'] - 1} are missing from the archive",
                    )
                )
            elif (
                entry["prev"] != previous["hash"]
                or entry["seq"] < previous["seq"]
                or entry["genesis"] != previous["genesis"]
            ):
                report.add(
                    Finding(
                        Kind.CHECKPOINT_INCONSISTENT,
                        _E,
                        chain_id,
                        entry["seq"],
                        f"{entry['where']} does not follow checkpoint {previous['n']} (prev link, seq or genesis)",
                    )
                )
            previous = entry
    return out


def _digest_ok(path: str, data: bytes, entry: dict[str, Any], report: VerificationReport) -> bool:
    digest = sha256_hex(data)
    if digest != entry["sha256"] or len(data) != entry["bytes"]:
        report.add(
            Finding(
                Kind.BUNDLE_MODIFIED,
                _E,
                None,
                None,
                f"{path} was changed: {len(data)} bytes with SHA-256 {digest}, but its manifest signed "
                f"{entry['bytes']} bytes with SHA-256 {entry['sha256']}",
            )
        )
        return False
    return True


# ------------------------------------------------------------------------------------------------ records
def _run(tasks: list[tuple[Any, ...]], workers: int) -> Iterable[_BundleResult]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _check_bundle(task)
        return
    from otel_audit.verify.parallel import can_fork

    forking = can_fork()
    if forking:
        # Forked workers inherit what is imported here; importing Arrow in each of them after the
        # fork cost about 0.3 s per worker (measured: the first run of a fresh process was half as fast).
        import pyarrow.compute
        import pyarrow.json
        import pyarrow.parquet  # noqa: F401
    context = multiprocessing.get_context("fork" if forking else "spawn")
    with context.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_check_bundle, tasks)


def _default_workers() -> int:
    from otel_audit.verify.parallel import default_workers

    return default_workers()


def _check_bundle(task: tuple[Any, ...]) -> _BundleResult:
    store, path, sha, size, segments, watch = task
    import pyarrow as pa
    import pyarrow.parquet as pq

    result = _BundleResult(path)
    try:
        data = store.get(path)
    except FileNotFoundError:
        result.findings.append(Finding(Kind.BUNDLE_MISSING, _E, None, None, f"{path} is missing: deleted"))
        return result
    digest = sha256_hex(data)
    if digest != sha or len(data) != size:
        result.findings.append(
            Finding(
                Kind.BUNDLE_MODIFIED,
                _E,
                None,
                None,
                f"{path} was changed: {len(data)} bytes with SHA-256 {digest}, but its manifest "
                f"signed {size} bytes with SHA-256 {sha}",
            )
        )
        return result
    # Read, derived and hashed a slice at a time: the working set stays a few megabytes, reused from one
    # slice to the next and kept in the CPU's caches, instead of several hundred for a whole bundle (which
    # measured up to twice as slow in a fresh process, most of it in first touches of new memory).
    hashes: list[str] = []
    seqs: list[Any] = []
    prevs: list[Any] = []
    owners: list[Any] = []
    shown: dict[str, int] = {}
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))  # no copy of the bundle's bytes
        if not parquet.schema_arrow.remove_metadata().equals(records_schema().remove_metadata()):
            raise ValueError(f"unexpected columns {parquet.schema_arrow.names}")
        for batch in parquet.iter_batches(batch_size=SLICE_ROWS, use_threads=False):  # workers are the parallelism
            part = pa.Table.from_batches([batch])
            column = batch.column("canonical")
            derived = derive_columns(column)
            _compare_columns(path, part, derived, result, len(hashes), shown)
            hashes += record_hashes(column.cast(pa.binary()).to_pylist())
            seqs += derived.column("seq").to_pylist()
            prevs += derived.column("prev_hash").to_pylist()
            owners += derived.column("chain_id").to_pylist()
    except (pa.ArrowException, ValueError) as exc:
        result.findings.append(Finding(Kind.BUNDLE_MODIFIED, _E, None, None, f"{path} is not a records bundle: {exc}"))
        return result
    result.rows = len(hashes)
    row = 0
    for chain_id, first, last in segments:
        count = last - first + 1
        end = row + count
        if end > len(hashes):
            result.findings.append(
                Finding(
                    Kind.MISSING,
                    _E,
                    chain_id,
                    first,
                    f"{path} holds fewer rows than its manifest lists for chain {chain_id} "
                    f"seq {first}..{last}: records were removed from the bundle",
                )
            )
            return result
        bad = _first_bad(owners, seqs, prevs, hashes, row, end, chain_id, first)
        if bad is not None:
            i, kind, what = bad
            result.findings.append(Finding(kind, _E, chain_id, first + (i - row), f"{path} row {i}: {what}"))
        chain_watch = watch.get(chain_id)
        if chain_watch:
            seen = result.observed.setdefault(chain_id, {})
            for s in chain_watch:
                if first <= s <= last:
                    seen[s] = hashes[row + s - first]
        result.segments.append(_Segment(chain_id, first, prevs[row], last, hashes[end - 1], count))
        row = end
    if row != len(hashes):
        result.findings.append(
            Finding(
                Kind.INSERTED,
                _E,
                owners[row] if row < len(owners) else None,
                seqs[row],
                f"{path} holds {len(hashes) - row} row(s) beyond the chain ranges its "
                "manifest lists: added to the bundle",
            )
        )
    return result


#: Records read, derived and hashed at a time (see :func:`_check_bundle`). Measured, CPU per record of a
#: 100,000-record bundle: 5.7 us with 1,024, 4.9-5.2 with 2,048 or 4,096, 5.6 with 32,768, 6.1 whole.
SLICE_ROWS = 4_096


def _first_bad(
    owners: list[Any], seqs: list[Any], prevs: list[Any], hashes: list[Any], lo: int, hi: int, chain_id: str, first: int
) -> tuple[int, Kind, str] | None:
    """The first row in ``[lo, hi)`` out of place: another chain, another seq, or a broken link."""
    if (
        owners[lo:hi] == [chain_id] * (hi - lo)
        and seqs[lo:hi] == list(range(first, first + hi - lo))
        and prevs[lo + 1 : hi] == hashes[lo : hi - 1]
    ):
        return None
    for i in range(lo, hi):
        if owners[i] != chain_id:
            return i, Kind.REORDERED, f"a record of chain {owners[i]} where chain {chain_id} was listed"
        if seqs[i] != first + i - lo:
            return i, Kind.REORDERED, f"record sealed as seq {seqs[i]} where seq {first + i - lo} belongs"
        if i > lo and prevs[i] != hashes[i - 1]:
            return i, Kind.BROKEN_LINK, f"prev_hash {prevs[i]} does not match the record before ({hashes[i - 1]})"
    return None


def _compare_columns(
    path: str, table: Any, derived: Any, result: _BundleResult, offset: int, shown: dict[str, int]
) -> None:
    """Report stored columns of rows ``offset..`` of a bundle that differ from their sealed fields (at most
    20 rows per column and bundle: ``shown`` counts them across the bundle's slices)."""
    for name in RECORD_COLUMNS[:-1]:
        stored, sealed = table.column(name), derived.column(name)
        if stored.equals(sealed) or shown.get(name, 0) >= 20:
            continue
        stored_values, sealed_values = stored.to_pylist(), sealed.to_pylist()
        seqs = derived.column("seq").to_pylist()
        chains = derived.column("chain_id").to_pylist()
        for i, (a, b) in enumerate(zip(stored_values, sealed_values, strict=True)):
            if type(a) is type(b) and a == b:
                continue
            result.findings.append(
                Finding(
                    Kind.MODIFIED,
                    _E,
                    chains[i],
                    seqs[i],
                    f"{path} row {offset + i}: column {name} is {_short(a)} but the record was sealed with {_short(b)}",
                )
            )
            shown[name] = shown.get(name, 0) + 1
            if shown[name] >= 20:
                break


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


# ------------------------------------------------------------------------------------------------ chains
def _join_chains(
    manifests: list[Manifest],
    listed: list[_Listed],
    results: dict[str, _BundleResult],
    checkpoints: dict[str, list[dict[str, Any]]],
    report: VerificationReport,
) -> None:
    walked: dict[str, dict[str, Any]] = {}
    genesis_of: dict[str, str] = {}
    for manifest in manifests:
        for entry in manifest.doc["chains"]:
            if entry["genesis"] is not None:
                text = entry["genesis"]
                computed = genesis_hash(text.encode("utf-8"))
                try:
                    doc = orjson.loads(text)
                except orjson.JSONDecodeError:
                    doc = None
                if not isinstance(doc, dict) or doc.get("chain_id") != entry["chain_id"]:
                    report.add(
                        Finding(
                            Kind.GENESIS_MODIFIED,
                            _E,
                            entry["chain_id"],
                            0,
                            f"{manifest_name(manifest.run)}: the genesis document of chain "
                            f"{entry['chain_id']} names another chain or is not JSON",
                        )
                    )
                genesis_of[entry["chain_id"]] = computed
        by_chain: dict[str, list[_Segment]] = {}
        for item in listed:
            if item.manifest is not manifest or item.entry["kind"] != "records":
                continue
            result = results.get(item.entry["path"])
            if result is None:
                continue
            for segment in result.segments:
                by_chain.setdefault(segment.chain_id, []).append(segment)
        for entry in manifest.doc["chains"]:
            chain_id = entry["chain_id"]
            if not entry["records"]:
                continue
            segs = by_chain.get(chain_id, [])
            state = walked.setdefault(chain_id, {"last_seq": 0, "last_hash": None, "records": 0, "observed": {}})
            if state["last_seq"] == 0:
                state["last_hash"] = genesis_of.get(chain_id)
                if state["last_hash"] is None:
                    report.add(
                        Finding(
                            Kind.UNREGISTERED_CHAIN,
                            _E,
                            chain_id,
                            1,
                            f"the archive holds chain {chain_id} from seq 1 but no genesis document for "
                            "it: its first link cannot be checked",
                        )
                    )
            for seg in segs:
                if seg.first_seq != state["last_seq"] + 1:
                    if seg.first_seq > state["last_seq"] + 1:
                        report.add(
                            Finding(
                                Kind.MISSING,
                                _E,
                                chain_id,
                                state["last_seq"] + 1,
                                f"records {state['last_seq'] + 1}..{seg.first_seq - 1} of the chain are in "
                                "no archived bundle",
                            )
                        )
                    state["last_hash"] = None
                elif state["last_hash"] is not None and seg.first_prev != state["last_hash"]:
                    report.add(
                        Finding(
                            Kind.BROKEN_LINK,
                            _E,
                            chain_id,
                            seg.first_seq,
                            f"record {seg.first_seq} (first of its bundle) does not link to record "
                            f"{seg.first_seq - 1} ({manifest_name(manifest.run)})",
                        )
                    )
                state["last_seq"], state["last_hash"] = seg.last_seq, seg.last_hash
                state["records"] += seg.rows
            if segs and (entry["last_seq"] != state["last_seq"] or entry["last_hash"] != state["last_hash"]):
                report.add(
                    Finding(
                        Kind.MANIFEST_INVALID,
                        _E,
                        chain_id,
                        entry["last_seq"],
                        f"{manifest_name(manifest.run)} says chain {chain_id} ends at seq "
                        f"{entry['last_seq']} with hash {entry['last_hash']}, but its bundles end at seq "
                        f"{state['last_seq']} with hash {state['last_hash']}",
                    )
                )
    for result in results.values():
        for chain_id, seen in result.observed.items():
            walked.setdefault(chain_id, {"last_seq": 0, "last_hash": None, "records": 0, "observed": {}})
            walked[chain_id]["observed"].update(seen)
    for chain_id in sorted(set(walked) | set(checkpoints)):
        state = walked.get(chain_id, {"last_seq": 0, "last_hash": None, "records": 0, "observed": {}})
        summary = report.chains.setdefault(chain_id, ChainSummary(chain_id, registered=chain_id in genesis_of))
        summary.records = state["records"]
        summary.last_seq = state["last_seq"] or None
        summary.head_hash = state["last_hash"]
        cps = checkpoints.get(chain_id, [])
        genesis = genesis_of.get(chain_id)
        newest_seq = 0
        for cp in cps:
            if genesis is not None and cp["genesis"] != genesis:
                report.add(
                    Finding(
                        Kind.CHECKPOINT_INCONSISTENT,
                        _E,
                        chain_id,
                        cp["seq"],
                        f"{cp['where']} names genesis {cp['genesis']}, not the archived one ({genesis})",
                    )
                )
            if cp["seq"] == 0:
                if genesis is not None and cp["head"] != genesis:
                    report.add(
                        Finding(
                            Kind.CHECKPOINT_INCONSISTENT,
                            _E,
                            chain_id,
                            0,
                            f"{cp['where']}: head of seq 0 is not the genesis hash",
                        )
                    )
                continue
            observed = state["observed"].get(cp["seq"])
            if observed is None:
                if cp["seq"] > state["last_seq"]:
                    report.add(
                        Finding(
                            Kind.TRUNCATED,
                            _E,
                            chain_id,
                            state["last_seq"] + 1,
                            f"{cp['where']} covers seq {cp['seq']}, but the archive holds the chain only up "
                            f"to seq {state['last_seq']}: archived records were removed",
                        )
                    )
                continue
            if observed != cp["head"]:
                report.add(
                    Finding(
                        Kind.REWRITTEN,
                        _E,
                        chain_id,
                        cp["seq"],
                        f"{cp['where']} signed head {cp['head']}, but the archived record {cp['seq']} "
                        f"hashes to {observed}: the chain was rewritten",
                    )
                )
            newest_seq = max(newest_seq, cp["seq"])
        if state["records"] and not cps:
            report.add(
                Finding(
                    Kind.UNANCHORED,
                    _E,
                    chain_id,
                    None,
                    f"{state['records']} archived record(s) of this chain are covered by no trusted "
                    "checkpoint: its emitter ran without a signing key, or the checkpoints are missing",
                )
            )
        elif state["last_seq"] > newest_seq and cps:
            report.add(
                Finding(
                    Kind.UNANCHORED,
                    _W,
                    chain_id,
                    newest_seq + 1,
                    f"archived records {newest_seq + 1}..{state['last_seq']} follow the newest archived "
                    "checkpoint; the next archive run adds the checkpoint that covers them",
                    count=state["last_seq"] - newest_seq,
                )
            )


# ------------------------------------------------------------------------------------------------ live database
def _join_database(
    conn: Any, manifests: list[Manifest], trusted: Mapping[str, VerifyKey], report: VerificationReport
) -> None:
    if not manifests:
        return
    _check_retention_references(conn, manifests, trusted, report)
    state = manifests[-1].doc["state"]["chains"]
    ids = [c for c, v in state.items() if v["last_seq"]]
    if not ids:
        return
    rows = conn.execute(
        "SELECT x.c::text, x.s, "
        "(SELECT min(seq) FROM audit_logs a WHERE a.chain_id = x.c AND a.seq > 0), "
        "(SELECT hash FROM audit_logs a WHERE a.chain_id = x.c AND a.seq = x.s LIMIT 1), "
        "(SELECT a.canonical FROM audit_logs a WHERE a.chain_id = x.c AND a.seq = x.s + 1 LIMIT 1), "
        "(SELECT max(seq) FROM audit_checkpoints k WHERE k.chain_id = x.c), "
        "EXISTS (SELECT 1 FROM audit_chains r WHERE r.chain_id = x.c) "
        "FROM unnest(%s::uuid[], %s::bigint[]) AS x(c, s)",
        (ids, [state[c]["last_seq"] for c in ids]),
    ).fetchall()
    for chain_id, last, first_live, live_at_last, next_live, newest_cp, registered in rows:
        archived_hash = state[chain_id]["last_hash"]
        if not registered:
            report.add(
                Finding(
                    Kind.ARCHIVE_MISMATCH,
                    _E,
                    chain_id,
                    None,
                    "the archived chain is not registered in the database (audit_chains): its registry "
                    "entry was deleted, or the archive belongs to another database",
                )
            )
        if first_live is None:
            if newest_cp is not None and newest_cp > last:
                report.add(
                    Finding(
                        Kind.MISSING,
                        _E,
                        chain_id,
                        last + 1,
                        f"the database's checkpoints cover the chain up to seq {newest_cp}, but its records "
                        f"after the archived seq {last} are in neither the archive nor the database",
                    )
                )
            continue
        if first_live <= last:
            if live_at_last is not None and live_at_last != archived_hash:
                report.add(
                    Finding(
                        Kind.ARCHIVE_MISMATCH,
                        _E,
                        chain_id,
                        last,
                        f"record {last} hashes to {archived_hash} in the archive but the database holds "
                        f"{live_at_last}: one of the two was changed",
                    )
                )
            if next_live is None and newest_cp is not None and newest_cp > last:
                report.add(
                    Finding(
                        Kind.MISSING,
                        _E,
                        chain_id,
                        last + 1,
                        f"record {last + 1} is in neither the archive nor the database",
                    )
                )
        elif first_live > last + 1:
            report.add(
                Finding(
                    Kind.MISSING,
                    _E,
                    chain_id,
                    last + 1,
                    f"records {last + 1}..{first_live - 1} are in neither the archive (which ends at "
                    f"{last}) nor the database (which starts at {first_live})",
                    count=first_live - 1 - last,
                )
            )
        if next_live is not None:
            try:
                prev = orjson.loads(bytes(next_live)).get("prev_hash")
            except orjson.JSONDecodeError:
                prev = None
            if prev != archived_hash:
                report.add(
                    Finding(
                        Kind.ARCHIVE_MISMATCH,
                        _E,
                        chain_id,
                        last + 1,
                        f"the database's record {last + 1} does not link to the newest archived record "
                        f"(prev_hash {prev}, archived hash {archived_hash})",
                    )
                )


def _check_retention_references(
    conn: Any, manifests: list[Manifest], trusted: Mapping[str, VerifyKey], report: VerificationReport
) -> None:
    """Each retention checkpoint of the database names the manifest it relied on: this archive must still hold it,
    with each chain up to the seq and head the checkpoint claims.

    That catches the one deletion the archive alone cannot show (its newest runs removed whole, on storage
    that allows deletion, after retention relied on them), and a retention checkpoint that claims more than
    the archive holds. Retention checkpoints are trusted by the rules ``otel-audit verify`` applies
    (:func:`otel_audit.verify.retention.judge_retention`): one not signed by a trusted key is reported, here as
    there, and its claims are not used.
    """
    from otel_audit.verify.retention import check_claims, judge_retention, load_retention_rows

    checkpoints, _prefixes = judge_retention(load_retention_rows(conn), trusted, report)
    check_claims(checkpoints, manifests, report, archive_description="this archive")
