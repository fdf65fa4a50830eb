"""Anchoring: hold every chain to its signed checkpoints, trusting only the keys and witnesses given.

Pure logic (no database): :mod:`otel_audit.verify.database` feeds it the
checkpoint rows of the database under test and the entries of each witness,
asks which sequence numbers to watch during the record walk, and hands back
what the walk observed there.

What is trusted: a checkpoint whose signature verifies under one of the
``trusted_keys`` (the key it names, by key id). Nothing else: keys, columns
or verdicts stored in the database count for nothing. Without trusted keys
(plain ``otel-audit verify``) checkpoints are still held against the chain,
but a warning says their signatures were not checked.

The trusted checkpoints of a chain, from the database and the witnesses, form
its *evidence*. Against it:

* a record count below the newest checkpointed sequence number: ``truncated``;
* a record whose hash differs from the head a checkpoint signed at its
  position: ``rewritten`` (edited, hashes recomputed);
* evidence for a chain the database has no registry entry and no records
  for: ``chain_deleted``;
* a checkpoint the witness has and the database lacks: ``checkpoint_missing``,
  or ``rolled_back`` when the database's checkpoints simply end early;
* records after the newest checkpoint: ``unanchored`` (count and age; an error
  past ``max_unanchored_age``); no checkpoint at all, with trusted keys: an
  ``unanchored`` error (missing integrity data is never "nothing to check");
* a newest checkpoint that is not the closing one and is overdue: ``unclosed``
  (a crash, reported as such; not by itself tampering).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from otel_audit.core.checkpoint import (
    Checkpoint,
    CheckpointFormatError,
    SignatureStatus,
    parse_checkpoint,
    parse_envelope,
)
from otel_audit.core.keys import VerifyKey
from otel_audit.verify.report import ChainSummary, Finding, Kind, Severity, VerificationReport
from otel_audit.witness.store import EntryLink, Witness, entry_name, entry_place, name_matches, split_entry

__all__ = ["AnchorPolicy", "Anchoring"]

_E, _W, _I = Severity.ERROR, Severity.WARNING, Severity.INFO

#: A chain whose newest checkpoint is older than this many intervals (plus the grace) has stopped.
STALE_INTERVALS = 3
STALE_GRACE_SECONDS = 60.0
#: A checkpoint committed less than this long ago may not have reached the witness yet.
WITNESS_GRACE_SECONDS = 60.0
#: Records may be dated up to one interval plus this after the newest checkpoint (checkpointer latency).
POLICY_GRACE_SECONDS = 60.0


@dataclass
class AnchorPolicy:
    trusted_keys: Mapping[str, VerifyKey] | None = None  # None: signatures are not checked
    witnesses: Sequence[Witness] = ()
    max_unanchored_age: float | None = None  # seconds; None: unanchored records are reported, not failed
    now: float | None = None  # unix time to judge ages against (default: the time of the check)


@dataclass(frozen=True, slots=True)
class _Cp:
    """What the checks need of one checkpoint (kept small: there can be many)."""

    n: int
    seq: int
    head: str
    genesis: str
    prev: str | None
    time: str
    interval_ms: int
    closed: bool
    key_id: str
    hash: str
    origin: str  # "database" or the witness file
    adopted_by: Any = None  # the process that closed a dead emitter's chain (closing checkpoints only)

    def describe(self) -> str:
        closing = ", closing" if self.closed else ""
        if self.adopted_by is not None:
            closing = f", closing, adopted by pid {self.adopted_by.get('pid')} on {self.adopted_by.get('host_name')}"
        return f"checkpoint {self.n} (seq {self.seq}, signed {self.time} by key {self.key_id}{closing}, {self.origin})"


def _slim(cp: Checkpoint, origin: str, strings: dict[str, str]) -> _Cp:
    intern = strings.setdefault
    return _Cp(
        cp.n,
        cp.seq,
        cp.head,
        intern(cp.genesis, cp.genesis),
        cp.prev,
        cp.time,
        cp.interval_ms,
        cp.closed,
        intern(cp.key_id, cp.key_id),
        cp.hash,
        origin,
        cp.adopted_by,
    )


@dataclass
class _Chain:
    db: dict[int, _Cp] = field(default_factory=dict)  # trusted database checkpoints by number
    db_numbers: set[int] = field(default_factory=set)  # every number with a database row, valid or not
    witness: dict[int, _Cp] = field(default_factory=dict)  # trusted witness checkpoints by number
    witness_hashes: dict[int, set[str]] = field(default_factory=dict)
    evidence: dict[int, _Cp] = field(default_factory=dict)
    heads: dict[int, _Cp] = field(default_factory=dict)  # seq -> the first checkpoint that signed it
    watch: frozenset[int] = frozenset()


class Anchoring:
    def __init__(self, policy: AnchorPolicy, report: VerificationReport) -> None:
        self.policy = policy
        self.report = report
        self.trusted = policy.trusted_keys
        self.now = policy.now if policy.now is not None else time.time()
        self._chains: dict[str, _Chain] = {}
        self._strings: dict[str, str] = {}
        #: (chain, key id, source) -> [(n, seq)] of checkpoints signed by keys that are not trusted
        self._untrusted: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
        self.database_rows = 0
        self.witness_entries = 0

    # ------------------------------------------------------------------ loading
    def _chain(self, chain_id: str) -> _Chain:
        chain = self._chains.get(chain_id)
        if chain is None:
            chain = self._chains[chain_id] = _Chain()
        return chain

    def chains(self) -> set[str]:
        return set(self._chains)

    def load_database(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of ``audit_checkpoints``: chain_id, n, seq, head, signed_at (as checkpoint time text),
        key_id, closed, body, signature, hash."""
        for chain_col, n_col, seq_col, head_col, time_col, key_col, closed_col, body, signature, hash_col in rows:
            self.database_rows += 1
            where = f"audit_checkpoints row ({chain_col}, {n_col})"
            try:
                cp = parse_checkpoint(bytes(body), bytes(signature))
            except CheckpointFormatError as exc:
                self._chain(chain_col).db_numbers.add(n_col)
                self._add(Kind.CHECKPOINT_MALFORMED, _E, chain_col, None, f"{where} is not a valid checkpoint: {exc}")
                continue
            chain = self._chain(cp.chain_id)
            chain.db_numbers.add(cp.n)
            if (chain_col, n_col) != (cp.chain_id, cp.n):
                self._add(
                    Kind.CHECKPOINT_MALFORMED,
                    _E,
                    cp.chain_id,
                    cp.seq,
                    f"{where} holds checkpoint {cp.n} of chain {cp.chain_id}: moved between rows",
                )
            stored = {
                "seq": seq_col,
                "head": head_col,
                "signed_at": time_col,
                "key_id": key_col,
                "closed": closed_col,
                "hash": hash_col,
            }
            signed = {
                "seq": cp.seq,
                "head": cp.head,
                "signed_at": cp.time,
                "key_id": cp.key_id,
                "closed": cp.closed,
                "hash": cp.hash,
            }
            for column, value in stored.items():
                if value != signed[column]:
                    self._add(
                        Kind.CHECKPOINT_MALFORMED,
                        _E,
                        cp.chain_id,
                        cp.seq,
                        f"checkpoint {cp.n}: column {column} was changed (stored {value!r}, signed {signed[column]!r})",
                    )
            if self._trusted(cp, "database", "the database"):
                if cp.n in chain.db:
                    continue  # a second row for one number: already reported as moved
                chain.db[cp.n] = _slim(cp, "database", self._strings)

    def load_witness(self, witness: Witness, chain_ids: Sequence[str] | None) -> None:
        """Read one witness: its checkpoints become evidence; its entries' names and links are checked.

        Each entry names the previous entry of its chain (file name and SHA-256 of its bytes): one
        that names an entry that is absent, or whose bytes changed, shows a deleted or edited entry
        (``witness_gap``). A file whose name disagrees with the checkpoint it holds is
        ``witness_name_mismatch``. Entries written before entries were chained are read, with a
        warning.
        """
        wanted = set(chain_ids) if chain_ids else None
        files: dict[str, dict[str, bytes]] = {}  # chain directory -> file name -> bytes
        links: list[tuple[str, str, EntryLink, Checkpoint]] = []
        unchained: dict[str, int] = {}
        for entry in witness.read(chain_ids):
            self.witness_entries += 1
            if entry.data is None:
                self._add(
                    Kind.CHECKPOINT_MALFORMED, _W, None, None, f"{witness.description}: {entry.location}: {entry.error}"
                )
                continue
            chain_dir, name = entry_place(entry.location)
            files.setdefault(chain_dir, {})[name] = entry.data
            try:
                envelope, link = split_entry(entry.data)
                cp = parse_envelope(envelope)
            except (ValueError, CheckpointFormatError) as exc:
                self._add(
                    Kind.CHECKPOINT_MALFORMED,
                    _W,
                    None,
                    None,
                    f'{entry.location} is not a witness entry ({exc}): a write cut short by a crash ("torn"; '
                    "the next attempt is written beside it with .2, .3, ... before the suffix), or a file someone "
                    "added; it is ignored unless another entry names it",
                )
                continue
            if cp.chain_id != chain_dir or not name_matches(name, cp):
                self._add(
                    Kind.WITNESS_NAME_MISMATCH,
                    _E,
                    cp.chain_id,
                    cp.seq,
                    f"{entry.location} holds {cp.describe()} of chain {cp.chain_id}, but a witness names it "
                    f"{cp.chain_id}/{entry_name(cp)} (or .2 ... .9 before the suffix): the file was renamed, copied "
                    "into place or edited",
                )
            if wanted is not None and cp.chain_id not in wanted:
                continue
            if link is None:
                unchained[cp.chain_id] = unchained.get(cp.chain_id, 0) + 1
            else:
                links.append((chain_dir, entry.location, link, cp))
            if not self._trusted(cp, entry.location, witness.description):
                continue
            chain = self._chain(cp.chain_id)
            chain.witness_hashes.setdefault(cp.n, set()).add(cp.hash)
            chain.witness.setdefault(cp.n, _slim(cp, entry.location, self._strings))
        for chain_dir, location, link, cp in links:
            if link.name is None:
                continue
            target = files.get(chain_dir, {}).get(link.name)
            if target is None:
                self._add(
                    Kind.WITNESS_GAP,
                    _E,
                    cp.chain_id,
                    cp.seq,
                    f"{location} ({cp.describe()}) names the previous witness entry {link.name}, which is not in "
                    f"{witness.description}: an entry was deleted from the witness",
                )
            elif hashlib.sha256(target).hexdigest() != link.sha256:
                self._add(
                    Kind.WITNESS_GAP,
                    _E,
                    cp.chain_id,
                    cp.seq,
                    f"{location} ({cp.describe()}) names the previous witness entry {link.name} with SHA-256 "
                    f"{link.sha256}, but that file's bytes hash to {hashlib.sha256(target).hexdigest()}: the entry "
                    "was edited or replaced",
                )
        for chain_id, count in sorted(unchained.items()):
            self._add(
                Kind.WITNESS_UNCHAINED,
                _W,
                chain_id,
                None,
                f"{count} entr{'y' if count == 1 else 'ies'} of this chain in {witness.description} name no previous "
                "entry (written by an otel-audit before entries were chained): a deleted one among them shows only "
                "as a gap in the checkpoint numbers",
                count=count,
            )

    def _trusted(self, cp: Checkpoint, origin: str, source: str) -> bool:
        if self.trusted is None:
            return True
        status = cp.signature_status(self.trusted)
        if status is SignatureStatus.VALID:
            return True
        if status is SignatureStatus.UNTRUSTED_KEY:
            # Reported per chain, key and source in prepare(): one emitter with a key that was
            # not given would otherwise bury the report under one finding per checkpoint.
            self._untrusted.setdefault((cp.chain_id, cp.key_id, source), []).append((cp.n, cp.seq))
        else:
            key = self.trusted[cp.key_id]
            self._add(
                Kind.BAD_SIGNATURE,
                _E,
                cp.chain_id,
                cp.seq,
                f"{cp.describe()} in {origin}: the signature does not verify under trusted key {cp.key_id} "
                f"({key.source or 'given key'}): the checkpoint was altered or forged",
            )
        return False

    # ------------------------------------------------------------------ before the walk
    def prepare(self) -> None:
        """Merge database and witness evidence per chain; report what needs no records to see."""
        if self.trusted is None and self.database_rows:
            self._add(
                Kind.CHECKPOINTS_UNCHECKED,
                _W,
                None,
                None,
                f"{self.database_rows} checkpoint(s) are stored, but their signatures were not checked and no "
                "witness was compared: pass --trusted-key PATH.pub (and --witness DIR). Without them, deleting the "
                "newest records together with their checkpoints, or rewriting a chain and its checkpoints, goes "
                "unnoticed",
            )
        for (chain_id, key_id, source), found in self._untrusted.items():
            found.sort()
            numbers = ", ".join(str(n) for n, _ in found[:5]) + (", ..." if len(found) > 5 else "")
            self._add(
                Kind.UNTRUSTED_KEY,
                _E,
                chain_id,
                found[0][1],
                f"{len(found)} checkpoint(s) of this chain in {source} (numbers {numbers}) are signed by key "
                f"{key_id}, which is not among the trusted keys: forged checkpoints, or an emitter whose public key "
                "was not given (add it with --trusted-key)",
                count=len(found),
            )
        witnessed = bool(self.policy.witnesses)
        for chain_id, chain in self._chains.items():
            self._merge(chain_id, chain, witnessed)
            self._consistency(chain_id, chain)
            seqs = {cp.seq for cp in chain.evidence.values()}
            if chain.evidence:
                seqs.add(max(seqs) + 1)  # the first unanchored record, for its age
            chain.watch = frozenset(seqs)

    def watch(self, chain_id: str) -> frozenset[int]:
        chain = self._chains.get(chain_id)
        return chain.watch if chain is not None else frozenset()

    def _merge(self, chain_id: str, chain: _Chain, witnessed: bool) -> None:
        for n, hashes in chain.witness_hashes.items():
            if len(hashes) > 1:
                self._add(
                    Kind.CHECKPOINT_MISMATCH,
                    _E,
                    chain_id,
                    chain.witness[n].seq,
                    f"the witness holds {len(hashes)} different checkpoints numbered {n}, each validly signed: the "
                    "signing key signed two histories (key compromise, or two processes sharing one chain id)",
                )
        evidence = dict(chain.db)
        for n, cp in chain.witness.items():
            mine = chain.db.get(n)
            if mine is not None and mine.hash != cp.hash:
                self._add(
                    Kind.CHECKPOINT_MISMATCH,
                    _E,
                    chain_id,
                    cp.seq,
                    f"checkpoint {n} in the database (seq {mine.seq}, head {mine.head}) differs from the witnessed "
                    f"one ({cp.describe()}): the database copy was replaced",
                )
            evidence[n] = cp  # the witness copy wins: the database is the party under test
        chain.evidence = dict(sorted(evidence.items()))
        if not witnessed:
            return
        # Witnessed but absent from the database: deleted or rolled back. (A chain with no
        # checkpoint rows at all is judged in finish(), once we know whether the chain is there.)
        if chain.db_numbers:
            absent = sorted(n for n in chain.witness if n not in chain.db_numbers)
            top = max(chain.db_numbers)
            tail = [n for n in absent if n > top]
            middle = [n for n in absent if n < top]
            for first, last in _ranges(middle):
                cp = chain.witness[first]
                self._add(
                    Kind.CHECKPOINT_MISSING,
                    _E,
                    chain_id,
                    cp.seq,
                    f"{_numbers(first, last)} are in the witness but not in the database: deleted "
                    f"(first: {cp.describe()})",
                    count=last - first + 1,
                )
            if tail:
                newest = chain.witness[tail[-1]]
                self._add(
                    Kind.ROLLED_BACK,
                    _E,
                    chain_id,
                    newest.seq,
                    f"the database's checkpoints of this chain end at number {top}, but the witness holds "
                    f"{len(tail)} newer one(s) up to {newest.describe()}: the database was rolled back or its "
                    "newest checkpoints were deleted",
                    count=len(tail),
                )
        # In the database but never witnessed (witness failures). The newest may still be on its way:
        # a witness copy follows the commit within moments, unless the chain was closed.
        unwitnessed = [cp for n, cp in chain.db.items() if n not in chain.witness]
        if unwitnessed:
            newest_witnessed = max(chain.witness, default=0)
            closed = any(cp.closed for cp in chain.db.values())
            old = [
                cp
                for cp in unwitnessed
                if cp.n < newest_witnessed or closed or self.now - _unix(cp.time) > WITNESS_GRACE_SECONDS
            ]
            if old:
                self._add(
                    Kind.NOT_WITNESSED,
                    _W,
                    chain_id,
                    old[0].seq,
                    f"{len(old)} checkpoint(s) of this chain are in the database but not in the witness "
                    f"(numbers {old[0].n}..{old[-1].n}): witness writes failed (see the emitter's witness_failures "
                    "and its ERROR logs) or this emitter was not given the witness; they are trusted by signature "
                    "only, so a rollback of them would not be seen",
                    count=len(old),
                )

    def _consistency(self, chain_id: str, chain: _Chain) -> None:
        evidence = chain.evidence
        if not evidence:
            return
        numbers = list(evidence)
        known = set(numbers) | chain.db_numbers
        gaps = [n for n in range(1, numbers[-1]) if n not in known]
        for first, last in _ranges(gaps):
            after = evidence.get(last + 1)
            self._add(
                Kind.CHECKPOINT_MISSING,
                _E,
                chain_id,
                after.seq if after else None,
                f"{_numbers(first, last)} are missing from the database"
                + (" and the witness" if self.policy.witnesses else "")
                + " (the numbering has a gap): deleted",
                count=last - first + 1,
            )
        previous: _Cp | None = None
        genesis = evidence[numbers[0]].genesis
        for cp in evidence.values():
            problem = None
            if cp.genesis != genesis:
                problem = f"names genesis {cp.genesis}, an earlier one {genesis}"
            elif previous is not None:
                if previous.closed:
                    problem = f"follows the closing checkpoint {previous.n}"
                elif cp.seq < previous.seq:
                    problem = f"goes back to seq {cp.seq} after checkpoint {previous.n} at seq {previous.seq}"
                elif cp.time < previous.time:
                    problem = f"is dated before checkpoint {previous.n} ({previous.time})"
                elif cp.n == previous.n + 1 and cp.prev != previous.hash:
                    problem = f"does not link to checkpoint {previous.n} (prev {cp.prev}, expected {previous.hash})"
            first_at_seq = chain.heads.setdefault(cp.seq, cp)
            if problem is None and first_at_seq.head != cp.head:
                problem = (
                    f"signs head {cp.head} for seq {cp.seq}, checkpoint {first_at_seq.n} signed {first_at_seq.head}"
                )
            if problem is not None:
                self._add(
                    Kind.CHECKPOINT_INCONSISTENT,
                    _E,
                    chain_id,
                    cp.seq,
                    f"{cp.describe()} {problem}: validly signed checkpoints contradict each other, which only the "
                    "holder of the signing key can cause",
                )
            previous = cp

    # ------------------------------------------------------------------ after the walk
    def finish(
        self,
        chain_id: str,
        summary: ChainSummary | None,
        observed: Mapping[int, tuple[str, str | None]],
        genesis_hash: str | None,
    ) -> None:
        """Judge one chain. ``summary`` is None when the database holds nothing of it;
        ``genesis_hash`` is the registry's (None when unregistered)."""
        chain = self._chains.get(chain_id)
        evidence = chain.evidence if chain is not None else {}
        if not evidence:
            if summary is not None and self.trusted is not None:
                records = summary.records + summary.quarantined
                self._add(
                    Kind.UNANCHORED,
                    _E,
                    chain_id,
                    None,
                    f"no checkpoint signed by a trusted key anchors this chain ({records} record(s)): "
                    + (
                        f"its {len(chain.db_numbers)} checkpoint(s) in the database are not signed by a trusted key "
                        "(pass the public key of every emitter in use with --trusted-key)"
                        if chain is not None and chain.db_numbers
                        else _without_key(summary.emitter)
                    )
                    + ", or its checkpoints were deleted. "
                    "Truncation or a rewrite of this chain cannot be ruled out",
                    count=records,
                )
            return
        assert chain is not None  # evidence comes from it
        last = evidence[next(reversed(evidence))]
        anchored = max(cp.seq for cp in evidence.values())
        if summary is None:
            in_db = " (its checkpoints remain in audit_checkpoints)" if chain.db_numbers else ""
            self._add(
                Kind.CHAIN_DELETED,
                _E,
                chain_id,
                None,
                f"the database has no registry entry and no records of this chain, but {last.describe()} proves it "
                f"existed with {anchored} record(s){in_db}: the whole chain was deleted (or this witness also "
                "serves another database: give each audit database a witness directory of its own)",
                count=anchored,
            )
            return
        if not chain.db_numbers and chain.witness:
            self._add(
                Kind.CHECKPOINT_MISSING,
                _E,
                chain_id,
                None,
                f"all {len(chain.witness)} witnessed checkpoint(s) of this chain (up to {last.describe()}) are "
                "missing from the database: deleted",
                count=len(chain.witness),
            )
        self._signers(chain_id, evidence, summary)
        summary.extra["checkpoints"] = len(evidence)
        summary.extra["anchored_seq"] = anchored
        summary.extra["closed"] = last.closed
        if last.adopted_by is not None:
            # Closed by the process that replayed its dead emitter's spool: adopted, not closed by its owner.
            summary.extra["adopted_by"] = dict(last.adopted_by)
        if genesis_hash is not None and genesis_hash != last.genesis:
            self._add(
                Kind.REWRITTEN,
                _E,
                chain_id,
                0,
                f"the chain's genesis (registry entry) hashes to {genesis_hash}, but {last.describe()} signed genesis "
                f"{last.genesis}: the chain was replaced from its start",
            )
        stored_to = summary.last_seq or 0
        if anchored > stored_to:
            self._add(
                Kind.TRUNCATED,
                _E,
                chain_id,
                stored_to + 1,
                f"records {stored_to + 1}..{anchored} were removed from the end of the chain: "
                f"{chain.heads[anchored].describe()} covers seq {anchored}, the database ends at {stored_to}",
                count=anchored - stored_to,
            )
        self._rewritten(chain_id, chain, observed)
        if last.closed:
            summary.extra["unanchored"] = 0
            if stored_to > anchored:
                self._add(
                    Kind.INSERTED,
                    _E,
                    chain_id,
                    anchored + 1,
                    f"records {anchored + 1}..{stored_to} follow the closing {last.describe()}: written by someone "
                    "other than the chain's emitter",
                    count=stored_to - anchored,
                )
            return
        unanchored = max(0, stored_to - anchored)
        summary.extra["unanchored"] = unanchored
        self._policy(chain_id, chain, summary, last, anchored, stored_to)
        interval = last.interval_ms / 1000
        overdue = self.now - _unix(last.time) > STALE_INTERVALS * interval + STALE_GRACE_SECONDS
        if overdue:
            hint = (
                ""
                if self.policy.witnesses
                else (" Without --witness, deleting a chain's newest checkpoints and records looks the same")
            )
            self._add(
                Kind.UNCLOSED,
                _W,
                chain_id,
                last.seq,
                f"the chain stopped without a closing checkpoint: the newest is {last.describe()} and the next was "
                f"due {interval:g}s later. Its process crashed or was killed; that alone is not tampering.{hint}",
            )
        if unanchored:
            first = observed.get(anchored + 1)
            written = first[1] if first is not None else None
            age = self.now - _unix(written) if written else self.now - _unix(last.time)
            too_old = self.policy.max_unanchored_age is not None and age > self.policy.max_unanchored_age
            limit = f" (limit --max-unanchored-age {self.policy.max_unanchored_age:g}s)" if too_old else ""
            self._add(
                Kind.UNANCHORED,
                _E if too_old else _I,
                chain_id,
                anchored + 1,
                f"{unanchored} record(s) after the newest checkpoint (seq {anchored}, {last.time}) are not anchored "
                f"yet; the oldest was written {written or 'after ' + last.time}, {age:,.0f}s ago{limit}. They "
                "could be removed without trace until the next checkpoint covers them",
                count=unanchored,
            )

    def _signers(self, chain_id: str, evidence: Mapping[int, _Cp], summary: ChainSummary) -> None:
        """Hold each trusted checkpoint to the key the chain's sealed genesis names (``checkpoints.key_id``).

        Trusting several emitters' keys must not let the holder of one sign for another's chain: with
        the database's owner, they could rewrite that chain and anchor the result. The closing
        checkpoint of an adopted chain is signed by the adopter, so it is held to the key the
        adopter's own genesis names (any trusted key when the adopter's chain is not in this
        verification). A chain whose genesis seals no policy (written before policies were sealed)
        names no key: nothing to hold it to.
        """
        if self.trusted is None:
            return
        policy = summary.extra.get("checkpoint_policy")
        if not isinstance(policy, dict) or "key_id" not in policy:
            return
        for cp in evidence.values():
            expected, whose = policy["key_id"], "the chain's genesis"
            if cp.adopted_by is not None:
                adopter = self.report.chains.get(str(cp.adopted_by.get("chain_id")))
                own = adopter.extra.get("checkpoint_policy") if adopter is not None else None
                if adopter is None or not isinstance(own, dict) or "key_id" not in own:
                    continue
                expected, whose = own["key_id"], f"the genesis of the adopting chain {adopter.chain_id}"
            if cp.key_id != expected:
                named = f"key {expected}" if expected is not None else "no key (its emitter signed nothing)"
                self._add(
                    Kind.WRONG_KEY,
                    _E,
                    chain_id,
                    cp.seq,
                    f"{cp.describe()} is signed by a trusted key, but {whose} names {named} as the one that signs "
                    "its checkpoints: the holder of another emitter's key signed it, so the records it anchors "
                    "cannot be trusted",
                )

    def _policy(
        self, chain_id: str, chain: _Chain, summary: ChainSummary, last: _Cp, anchored: int, stored_to: int
    ) -> None:
        """Hold an unclosed chain to the checkpoint policy sealed in its genesis (trusted keys only).

        The emitter never seals more than ``2 * records`` records after the newest checkpoint it
        spooled, and the sink commits in spool order, so the database never holds more after the
        newest stored one, crash or not. More means checkpoints were deleted (a rewrite or appended
        records hidden in an unanchored tail). Records dated later than one interval (plus the
        grace) after the newest checkpoint mean the same for applications' chains (their record
        times are the emitter's clock at the logging call; the ingest's are the senders').
        """
        if self.trusted is None:
            return
        policy = _parse_policy(summary.extra.get("checkpoint_policy"))
        if policy is None:
            self._add(
                Kind.NO_CHECKPOINT_POLICY,
                _W,
                chain_id,
                None,
                "this chain is not closed and its genesis seals no checkpoint policy (written by an otel-audit "
                "before 0.x, or malformed): how many records may follow its newest checkpoint cannot be judged, so "
                "records appended to it, or a rewrite whose later checkpoints were deleted, may go unnoticed",
            )
            return
        records, interval_ms = policy
        allowed = 2 * records
        # Between two consecutive checkpoints the later one anchors the records: a longer gap only
        # says the emitter did not keep its promise (it cannot hide an edit), so it is a warning.
        previous: _Cp | None = None
        for cp in chain.evidence.values():
            if previous is not None and cp.n == previous.n + 1 and cp.seq - previous.seq > allowed:
                self._add(
                    Kind.UNANCHORED_SPAN,
                    _W,
                    chain_id,
                    previous.seq + 1,
                    f"records {previous.seq + 1}..{cp.seq} lie between checkpoints {previous.n} and {cp.n}, more than "
                    f"the {allowed} its sealed policy (a checkpoint every {records} records) allows; checkpoint "
                    f"{cp.n} anchors them, so this is the emitter breaking its promise, not tampering",
                    count=cp.seq - previous.seq,
                )
            previous = cp
        tail = stored_to - anchored
        if tail > allowed:
            self._add(
                Kind.UNANCHORED_SPAN,
                _E,
                chain_id,
                anchored + 1,
                f"records {anchored + 1}..{stored_to} ({tail}) follow the newest trusted checkpoint "
                f"({last.describe()}), but the chain's sealed policy (a checkpoint every {records} records) lets at "
                f"most {allowed} go unanchored: the later checkpoints were deleted or the records were appended by "
                "someone else; none of them can be trusted",
                count=tail,
            )
            return
        kind = summary.emitter.get("kind") if isinstance(summary.emitter, dict) else None
        if tail and kind != "ingest" and summary.last_timestamp:
            deadline = _unix(last.time) + interval_ms / 1000 + POLICY_GRACE_SECONDS
            newest = _unix(summary.last_timestamp)
            if newest > deadline:
                self._add(
                    Kind.UNANCHORED_SPAN,
                    _E,
                    chain_id,
                    anchored + 1,
                    f"records {anchored + 1}..{stored_to} follow the newest trusted checkpoint ({last.describe()}); "
                    f"the newest is dated {summary.last_timestamp}, {newest - _unix(last.time):,.0f}s later, but the "
                    f"chain's sealed policy signs a checkpoint every {interval_ms / 1000:g}s (grace "
                    f"{POLICY_GRACE_SECONDS:g}s): the later checkpoints were deleted or the records were appended by "
                    "someone else",
                    count=tail,
                )

    def _rewritten(self, chain_id: str, chain: _Chain, observed: Mapping[int, tuple[str, str | None]]) -> None:
        matched = 0
        mismatches: list[tuple[int, str, _Cp]] = []
        for seq, cp in sorted(chain.heads.items()):
            if seq == 0:
                continue
            seen = observed.get(seq)
            if seen is None:
                continue  # the record is missing: reported by the walk (or as truncation)
            if seen[0] == cp.head:
                if not mismatches:
                    matched = seq
            else:
                mismatches.append((seq, seen[0], cp))
        if not mismatches:
            return
        seq, actual, cp = mismatches[0]
        self._add(
            Kind.REWRITTEN,
            _E,
            chain_id,
            seq,
            f"record {seq} hashes to {actual}, but {cp.describe()} signed head {cp.head}: the chain after seq "
            f"{matched} was edited and its hashes recomputed ({len(mismatches)} checkpointed position(s) differ)",
            count=len(mismatches),
        )

    # ------------------------------------------------------------------ helpers
    def _add(
        self,
        kind: Kind,
        severity: Severity,
        chain_id: str | None,
        seq: int | None,
        detail: str,
        *,
        count: int | None = None,
    ) -> None:
        self.report.add(Finding(kind, severity, chain_id, seq, detail, count=count))


def _unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _parse_policy(policy: Any) -> tuple[int, int] | None:
    """(records, interval_ms) of a genesis ``checkpoints`` member that promises signed checkpoints."""
    if not isinstance(policy, dict) or not isinstance(policy.get("key_id"), str):
        return None
    records, interval = policy.get("records"), policy.get("interval_ms")
    if type(records) is not int or type(interval) is not int or records < 1 or interval < 1:
        return None
    return records, interval


def _without_key(emitter: Any) -> str:
    """Which writer ran without a signing key, by the kind its registry entry names (advice only)."""
    kind = emitter.get("kind") if isinstance(emitter, dict) else None
    if kind == "ingest":
        return (
            "the OTLP ingest that sealed it (`otel-audit serve`) ran without a signing key (start it with "
            "--signing-key or OTEL_AUDIT_SIGNING_KEY)"
        )
    if kind == "sdk":
        return (
            "the application that sealed it ran without a signing key (otel_audit.configure(signing_key=...) or "
            "OTEL_AUDIT_SIGNING_KEY)"
        )
    return (
        "its emitter ran without a signing key (OTEL_AUDIT_SIGNING_KEY for applications, `otel-audit serve "
        "--signing-key` for the OTLP ingest)"
    )


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _numbers(first: int, last: int) -> str:
    return f"checkpoint {first}" if first == last else f"checkpoints {first}..{last}"
