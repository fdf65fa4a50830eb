"""Which chain prefixes left PostgreSQL under a retention checkpoint the verifier trusts.

``otel-audit retention apply`` drops partitions only under a signed retention
checkpoint (:mod:`otel_audit.core.retention`) naming, per chain, the archived
prefix ``1..seq`` and the hash of record ``seq``. The verifier then starts
each chain's walk at that boundary: records of the prefix that are not in the
database are *archived*, not missing, and the first live record after the
prefix must link to the signed head. Everything else still counts as a
deletion.

The same rules as for chain checkpoints decide what is trusted, here and in
``otel-audit verify-archive --dsn`` alike (:func:`judge_retention`):

* with trusted keys, only a retention checkpoint whose signature verifies
  under one of them is used; one signed by another key (``untrusted_key``) or
  whose signature does not verify (``bad_signature``) is an error and covers
  nothing, so the records it claims are reported missing;
* without trusted keys every structurally valid one is used, and a warning
  (``checkpoints_unchecked``) says that a deletion of a chain's oldest records
  with a forged retention checkpoint would go unnoticed;
* in either case, a row whose columns differ from its signed body
  (``checkpoint_malformed``), a gap in the numbering (``checkpoint_missing``)
  or a broken ``prev`` link (``checkpoint_inconsistent``) is an error.

With the archive at hand (:func:`check_claims`), each trusted retention
checkpoint must name a manifest the archive holds, with the same hash, whose
state holds each claimed chain up to exactly the claimed seq and head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otel_audit.core.keys import VerifyKey
from otel_audit.core.retention import RetentionCheckpoint, RetentionFormatError, parse_retention
from otel_audit.verify.exact import utc_text
from otel_audit.verify.report import Finding, Kind, Severity, VerificationReport

__all__ = ["ArchivedPrefix", "bundle_holding", "check_claims", "judge_retention", "load_retention_rows"]

_E, _W = Severity.ERROR, Severity.WARNING


@dataclass(frozen=True)
class ArchivedPrefix:
    """Records ``1..seq`` of a chain are in an archive; record ``seq`` hashes to ``head``."""

    seq: int
    head: str
    checkpoint: RetentionCheckpoint  # the newest trusted retention checkpoint that claims this prefix

    def where(self, bundle: str | None = None) -> str:
        archive = self.checkpoint.doc["archive"]
        place = f"bundle {bundle} of {archive['url']}" if bundle else f"archive {archive['url']} run {archive['run']}"
        return f"{place}; retention checkpoint {self.checkpoint.n} of {self.checkpoint.doc['time']}"


def load_retention_rows(conn: Any) -> list[tuple[Any, ...]]:
    """Rows (n, key_id, body, signature, hash, signed_at) of ``audit_retention`` in number order; [] without the
    table. ``signed_at`` is rendered as the body states ``time`` (RFC 3339, microseconds, ``Z``) to be compared
    with it."""
    row = conn.execute("SELECT to_regclass('audit_retention')").fetchone()
    if not row or row[0] is None:
        return []
    rows: list[tuple[Any, ...]] = conn.execute(
        f"SELECT n, key_id, body, signature, hash, {utc_text('signed_at')} FROM audit_retention ORDER BY n"
    ).fetchall()
    return rows


def judge_retention(
    rows: Iterable[Sequence[Any]],
    trusted: Mapping[str, VerifyKey] | None,
    report: VerificationReport,
) -> tuple[list[RetentionCheckpoint], dict[str, ArchivedPrefix]]:
    """The retention checkpoints to rely on, and per chain the longest archived prefix they claim.

    Every reason not to rely on one is added to ``report``.
    """
    usable: list[RetentionCheckpoint] = []
    numbers: list[int] = []
    previous: RetentionCheckpoint | None = None
    unchecked = 0
    for n, key_id, body, signature, stored_hash, signed_at in rows:
        numbers.append(n)
        try:
            cp = parse_retention(bytes(body), bytes(signature))
        except RetentionFormatError as exc:
            report.add(
                Finding(
                    Kind.CHECKPOINT_MALFORMED,
                    _E,
                    None,
                    None,
                    f"audit_retention row {n} is not a retention checkpoint ({exc}): it covers nothing",
                )
            )
            previous = None
            continue
        if (cp.n, cp.key_id, cp.hash, cp.doc["time"]) != (n, key_id, stored_hash, signed_at):
            report.add(
                Finding(
                    Kind.CHECKPOINT_MALFORMED,
                    _E,
                    None,
                    None,
                    f"audit_retention row {n}: its columns (n, key_id, hash, signed_at) differ from the signed body "
                    f"of {cp.describe()}: changed after it was written",
                )
            )
        if trusted is not None:
            valid = cp.signature_valid(trusted)
            if valid is None:
                report.add(
                    Finding(
                        Kind.UNTRUSTED_KEY,
                        _E,
                        None,
                        None,
                        f"{cp.describe()} is signed by key {cp.key_id}, which is not among the trusted "
                        "keys: forged, or signed with a key that was not given (add the retention signing "
                        "key's public key with --trusted-key). It covers nothing",
                    )
                )
                previous = cp
                continue
            if not valid:
                report.add(
                    Finding(
                        Kind.BAD_SIGNATURE,
                        _E,
                        None,
                        None,
                        f"{cp.describe()}: the signature does not verify under trusted key {cp.key_id}: "
                        "altered or forged. It covers nothing",
                    )
                )
                previous = cp
                continue
        else:
            unchecked += 1
        if previous is not None and cp.n == previous.n + 1 and cp.doc["prev"] != previous.hash:
            report.add(
                Finding(
                    Kind.CHECKPOINT_INCONSISTENT,
                    _E,
                    None,
                    None,
                    f"{cp.describe()} does not link to retention checkpoint {previous.n} (prev "
                    f"{cp.doc['prev']}, expected {previous.hash}): one of them was replaced",
                )
            )
        usable.append(cp)
        previous = cp
    present = set(numbers)
    gaps = [k for k in range(1, max(numbers, default=0)) if k not in present]
    if gaps:
        report.add(
            Finding(
                Kind.CHECKPOINT_MISSING,
                _E,
                None,
                None,
                f"retention checkpoint(s) {', '.join(map(str, gaps[:10]))} are missing from audit_retention "
                "(the numbering has a gap): deleted",
                count=len(gaps),
            )
        )
    if unchecked:
        report.add(
            Finding(
                Kind.CHECKPOINTS_UNCHECKED,
                _W,
                None,
                None,
                f"{unchecked} retention checkpoint(s) are stored, but their signatures were not checked: "
                "pass --trusted-key PATH.pub (the key that signed them). Without it, deleting a chain's "
                "oldest records together with a forged retention checkpoint goes unnoticed",
            )
        )
    prefixes: dict[str, ArchivedPrefix] = {}
    for cp in usable:
        for chain_id, entry in cp.chains.items():
            known = prefixes.get(chain_id)
            if known is not None and known.seq == entry["seq"] and known.head != entry["head"]:
                report.add(
                    Finding(
                        Kind.CHECKPOINT_INCONSISTENT,
                        _E,
                        chain_id,
                        entry["seq"],
                        f"{cp.describe()} signs head {entry['head']} for seq {entry['seq']}, "
                        f"{known.checkpoint.describe()} signed {known.head}",
                    )
                )
            if known is None or entry["seq"] >= known.seq:
                prefixes[chain_id] = ArchivedPrefix(entry["seq"], entry["head"], cp)
    return usable, prefixes


def check_claims(
    checkpoints: Sequence[RetentionCheckpoint],
    manifests: Sequence[Any],
    report: VerificationReport,
    *,
    archive_description: str,
) -> None:
    """Hold each retention checkpoint to the archive's signed manifests (``manifests``: this archive's, in run order).

    A checkpoint of another archive (another ``archive_id``) is not this archive's to judge.
    """
    from otel_audit.archive.format import manifest_name

    if not manifests:
        for cp in checkpoints:
            report.add(
                Finding(
                    Kind.MANIFEST_MISSING,
                    _E,
                    None,
                    None,
                    f"{cp.describe()} in the database relied on {manifest_name(cp.doc['archive']['run'])}, "
                    f"but {archive_description} holds no manifest: the wrong archive, or its "
                    "manifests were deleted",
                )
            )
        return
    archive_id = manifests[-1].doc["archive_id"]
    by_run = {m.run: m for m in manifests}
    for cp in checkpoints:
        archive = cp.doc["archive"]
        if archive["archive_id"] != archive_id:
            continue
        manifest = by_run.get(archive["run"])
        if manifest is None or manifest.hash != archive["manifest"]:
            report.add(
                Finding(
                    Kind.MANIFEST_MISSING,
                    _E,
                    None,
                    None,
                    f"{cp.describe()} in the database relied on {manifest_name(archive['run'])} with hash "
                    f"{archive['manifest']}, which {archive_description} "
                    + ("does not hold" if manifest is None else f"holds with hash {manifest.hash}")
                    + ": archive runs were removed or replaced after records left PostgreSQL",
                )
            )
            continue
        state = manifest.doc["state"]["chains"]
        for chain_id, claim in sorted(cp.chains.items()):
            held = state.get(chain_id) or {}
            if (held.get("last_seq"), held.get("last_hash")) != (claim["seq"], claim["head"]):
                report.add(
                    Finding(
                        Kind.ARCHIVE_MISMATCH,
                        _E,
                        chain_id,
                        claim["seq"],
                        f"{cp.describe()} claims records 1..{claim['seq']} of the chain were archived (head "
                        f"{claim['head']}), but {manifest_name(manifest.run)} of {archive_description} holds it "
                        + (f"up to seq {held['last_seq']} (hash {held['last_hash']})" if held else "not at all")
                        + ": the retention checkpoint claims more than the archive holds",
                    )
                )


def bundle_holding(manifests: Sequence[Any], chain_id: str, seq: int) -> str | None:
    """The path of the records bundle the manifests list for record ``seq`` of the chain."""
    for manifest in manifests:
        for entry in manifest.doc["files"]:
            if entry["kind"] != "records":
                continue
            for chain, lo, hi in entry["chains"]:
                if chain == chain_id and lo <= seq <= hi:
                    return str(entry["path"])
    return None
