"""Walk one chain's stored rows and report every way they differ from what was sealed.

Pure logic over bytes and values (no database): the PostgreSQL reader feeds it
rows in stored order, the proof verifier and the tests can feed it anything.

Each row is checked on its own first:

* its bytes hash to the stored hash (else ``modified``) and parse as a record
  document of this chain (else ``malformed`` / ``reordered``);
* every queryable column equals the document's field (else ``modified``,
  naming the column, the stored and the sealed value).

Then rows are placed by the sequence number *inside their sealed bytes*, not
the column (which an attacker can edit), and the chain is walked in that
order: gaps are ``missing``, a second row for a position is ``inserted``, a
``prev_hash`` that does not match the previous record is ``broken_link``.

Positions named in ``watch`` (the sequence numbers signed checkpoints cover)
are remembered in :attr:`ChainWalker.observed` with the hash of the bytes the
chain holds there and their timestamp, for the checkpoint checks that follow
the walk. One set lookup per row: the fast path stays fast.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from otel_audit.core.record import RECORD_DOMAIN, RECORD_FIELDS
from otel_audit.verify.exact import json_column_equal
from otel_audit.verify.report import ChainSummary, Finding, Kind, Severity, VerificationReport

__all__ = ["ChainWalker", "FIELDS"]

FIELDS: tuple[str, ...] = RECORD_FIELDS
_FIELD_SET = frozenset(FIELDS)
_SEQ_INDEX = FIELDS.index("seq")
_CHAIN_INDEX = FIELDS.index("chain_id")
_ID_INDEX = FIELDS.index("id")
_INT_FIELDS = ("v", "seq", "trace_flags", "severity_number")
_INT_INDEXES = tuple(FIELDS.index(f) for f in _INT_FIELDS)
_JSON_FIELDS = ("old_values", "attributes")
_OLD_INDEX = FIELDS.index("old_values")
_ATTR_INDEX = FIELDS.index("attributes")

#: How many out-of-place rows are held while waiting for a missing position to
#: turn up (a reordering) before it is declared missing. Bounds memory.
_REORDER_WINDOW = 10_000

_E = Severity.ERROR
_sha256 = hashlib.sha256
_loads = orjson.loads


class _Entry:
    __slots__ = ("canonical_hash", "link_hash", "pos", "prev", "quarantined", "record_id", "timestamp")

    def __init__(
        self,
        pos: int,
        link_hash: str,
        prev: str | None,
        record_id: str | None,
        timestamp: Any,
        quarantined: bool,
        canonical_hash: str,
    ) -> None:
        self.pos = pos
        self.link_hash = link_hash
        self.prev = prev
        self.record_id = record_id
        self.timestamp = timestamp
        self.quarantined = quarantined
        self.canonical_hash = canonical_hash


class ChainWalker:
    """Feed rows of one chain (sorted by stored sequence number), then :meth:`finish`."""

    def __init__(
        self,
        chain_id: str,
        report: VerificationReport,
        summary: ChainSummary,
        *,
        genesis_hash: str | None,
        watch: Collection[int] = frozenset(),
        archived: tuple[int, str] | None = None,
    ) -> None:
        self.chain_id = chain_id
        #: (seq, head) of the prefix a trusted retention checkpoint says is archived: positions up to seq
        #: absent from the rows are not missing, and the record after seq links to head.
        self._archived_seq: int
        self._archived_head: str | None
        self._archived_seq, self._archived_head = archived if archived is not None else (0, None)
        self._watch = watch
        #: seq -> (hash of the stored bytes at that position, their timestamp), for watched positions.
        self.observed: dict[int, tuple[str, str | None]] = {}
        self.report = report
        self.summary = summary
        self._expected = 1
        self._last_link: str | None = genesis_hash  # None: unknown (after a gap or no registry)
        self._last_entry: _Entry | None = None
        self._pending: dict[int, _Entry] = {}
        self._quarantined: dict[int, _Entry] = {}
        self._quarantine_reasons: dict[int, str | None] = {}
        self._last_pos_hash: tuple[int, str | None] | None = None
        self._break: tuple[_Entry, str] | None = None
        self._fast_n = 0
        self._fast_invalid = 0
        self._fast_first: dict[str, Any] | None = None
        self._fast_last: dict[str, Any] | None = None

    # ------------------------------------------------------------------ input
    def feed(
        self,
        column_seq: int,
        stored_hash: str,
        canonical: bytes,
        columns: Sequence[Any] | None,
        json_texts: tuple[str | None, str | None] | None = None,
    ) -> None:
        """One stored row. ``columns`` are its values in :data:`FIELDS` order (None: not a table row);
        ``json_texts`` the texts of its ``old_values`` and ``attributes`` columns, for the exact comparison
        of numbers (None: rendered from ``columns``)."""
        if column_seq != self._expected and self._expected <= self._archived_seq:
            self._skip_archived(column_seq)
        computed = _sha256(RECORD_DOMAIN + canonical).hexdigest()
        doc: Any = None
        # Fast path: the intact record that comes next (nearly every row). Only
        # counters are kept here; the summary is brought up to date by _sync_fast.
        if (
            computed == stored_hash
            and column_seq == self._expected
            and columns is not None
            and not self._pending
            and self._break is None
        ):
            try:
                doc = _loads(canonical)
            except orjson.JSONDecodeError:
                doc = None
            if (
                doc.__class__ is dict
                and list(map(doc.get, FIELDS)) == columns  # every column equals its sealed field
                and doc["prev_hash"] == self._last_link
                and doc.keys() <= _FIELD_SET
                and _typed_same(doc, columns, canonical, json_texts)
            ):
                self._last_link = computed
                self._expected = column_seq + 1
                self._fast_n += 1
                self._fast_last = doc
                if self._fast_first is None:
                    self._fast_first = doc
                if doc["problems"]:
                    self._fast_invalid += 1
                if column_seq in self._watch:
                    self.observed[column_seq] = (computed, doc["timestamp"])
                if self._quarantined and column_seq in self._quarantined:
                    self._conflict(self._quarantined.pop(column_seq), computed)
                return
        self._sync_fast()
        if doc is None:
            try:
                doc = _loads(canonical)
            except orjson.JSONDecodeError:
                doc = None
        if doc.__class__ is not dict or not doc.keys() <= _FIELD_SET or doc.get("seq").__class__ is not int:
            self._add(Kind.MALFORMED, column_seq, "stored bytes are not an otel-audit record document")
            self._place(_Entry(column_seq, stored_hash, None, None, None, False, computed))
            return
        if computed != stored_hash:
            self._add(
                Kind.MODIFIED,
                column_seq,
                f"stored bytes do not match the stored hash (bytes hash to {computed}, hash column says "
                f"{stored_hash}): the record's content was changed",
                doc.get("id"),
            )
            # Link on the stored hash: a change of the bytes alone is one finding, not two.
            self._place(_Entry(column_seq, stored_hash, doc.get("prev_hash"), doc.get("id"), None, False, computed))
            return
        pos = doc["seq"]
        if columns is not None:
            expected_columns = list(map(doc.get, FIELDS))
            if expected_columns != columns or not _typed_same(doc, columns, canonical, json_texts):
                self._compare_columns(doc, expected_columns, columns, column_seq, canonical, json_texts)
        if doc.get("chain_id") != self.chain_id:
            self._add(
                Kind.REORDERED,
                column_seq,
                f"row of chain {self.chain_id} holds a record sealed in chain {doc.get('chain_id')} "
                f"(seq {pos}): moved between chains",
                doc.get("id"),
            )
            return
        timestamp = doc.get("timestamp")
        if doc.get("problems"):
            self.summary.invalid += 1
        self._place(_Entry(pos, computed, doc.get("prev_hash"), doc.get("id"), timestamp, columns is None, computed))

    def adopt(
        self,
        records: int,
        invalid: int,
        first_timestamp: str | None,
        last_seq: int,
        head_hash: str,
        last_timestamp: str | None,
        observed: dict[int, tuple[str, str | None]],
        first_seq: int = 1,
    ) -> None:
        """Take records ``first_seq..last_seq``, proved intact elsewhere (the parallel fast pass), as if fed here.

        Only for a walker nothing has been fed to yet. ``first_seq`` is 1, or at most one past the archived
        prefix (the range checker started the chain where the retention checkpoint says it goes on).
        """
        assert self._expected == 1 and not self._fast_n and self.summary.records == 0
        assert first_seq == 1 or first_seq <= self._archived_seq + 1
        self._fast_n, self._fast_invalid = records, invalid
        self._fast_first = {"seq": first_seq, "timestamp": first_timestamp}
        self._fast_last = {"seq": last_seq, "timestamp": last_timestamp}
        self._last_link, self._expected = head_hash, last_seq + 1
        self.observed.update(observed)

    def add_quarantined(
        self, stored_hash: str, canonical: bytes, column_seq: int | None = None, reason: str | None = None
    ) -> None:
        """A row of audit_quarantine: a record the sink did not store in audit_logs.

        When it holds a position the stored rows lack, it takes its place in
        the walk (so the links around it still verify) and is reported as
        ``record_hidden``, an error: a record of the chain must be in
        audit_logs, where queries look, and a superuser who moves one here
        hides it from them. A different record at a position a stored row
        holds is a refused contender (``inserted``, a warning); an exact copy
        of the stored record is nothing.
        """
        self._sync_fast()
        computed = hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest()
        try:
            doc = orjson.loads(canonical)
            pos = doc["seq"]
            if pos.__class__ is not int:
                raise TypeError(pos)
        except Exception:
            self._add(Kind.MALFORMED, column_seq, "a quarantined record is not an otel-audit record document")
            return
        if doc.get("chain_id") != self.chain_id:
            self._add(
                Kind.REORDERED,
                column_seq,
                f"a row of audit_quarantine filed under chain {self.chain_id} holds a record sealed in chain "
                f"{doc.get('chain_id')} (seq {pos})",
                doc.get("id"),
            )
            return
        if column_seq is not None and column_seq != pos:
            self._add(
                Kind.REORDERED,
                column_seq,
                f"column audit_quarantine.seq is {column_seq} but the record was sealed with seq {pos}",
                doc.get("id"),
            )
        if computed != stored_hash:
            self._add(Kind.MODIFIED, pos, "quarantined record's bytes do not match its stored hash", doc.get("id"))
        if pos in self._quarantined:  # the table's key is the (possibly edited) seq column: two claims
            self._add(
                Kind.INSERTED, pos, f"two rows of audit_quarantine hold records sealed at seq {pos}", doc.get("id")
            )
            return
        self._quarantined[pos] = _Entry(
            pos, computed, doc.get("prev_hash"), doc.get("id"), doc.get("timestamp"), True, computed
        )
        self._quarantine_reasons[pos] = reason
        self.summary.quarantined += 1

    # ------------------------------------------------------------------ walking
    def _skip_archived(self, column_seq: Any) -> None:
        """The rows jump ahead inside the archived prefix: the positions skipped left PostgreSQL under a
        trusted retention checkpoint. Past its end the walk goes on from the signed head; a jump beyond
        the prefix leaves the rest of the gap to be reported missing as usual."""
        if column_seq.__class__ is not int or column_seq <= self._expected or self._pending:
            return
        self._sync_fast()
        upto = min(column_seq - 1, self._archived_seq)
        # Records PostgreSQL refused (audit_quarantine, which retention leaves alone) took their place in the
        # chain when it was archived: inside the prefix they are archived, not a second claim on a position.
        for pos in [p for p in self._quarantined if self._expected <= p <= upto]:
            del self._quarantined[pos]
            self.summary.quarantined -= 1
        self._expected = upto + 1
        self._last_link = self._archived_head if upto == self._archived_seq else None

    def _place(self, entry: _Entry) -> None:
        pos = entry.pos
        # Positions skipped by the stored rows may be held by quarantined records
        # (refused by PostgreSQL): they take their place in the chain here.
        while pos > self._expected and self._expected in self._quarantined and not self._pending:
            self._accept(self._quarantined.pop(self._expected))
        if pos == self._expected:
            self._accept(entry)
            self._drain()
            return
        if pos < self._expected:
            self._duplicate(entry)
            return
        if pos in self._pending:
            self._duplicate(entry)
            return
        self._pending[pos] = entry
        if len(self._pending) > _REORDER_WINDOW:
            self._skip_gap()

    def _drain(self, *, quarantined: bool = False) -> None:
        """Accept held rows that are now next. Quarantined records only when asked
        (at the end, or when giving up on a gap): until then a stored row for the
        same position may still follow (see _place)."""
        while True:
            entry = self._pending.pop(self._expected, None)
            if entry is None and quarantined:
                entry = self._quarantined.pop(self._expected, None)
            if entry is None:
                return
            self._accept(entry)

    def _accept(self, entry: _Entry) -> None:
        pos = entry.pos
        if not entry.quarantined and pos in self._quarantined:
            self._conflict(self._quarantined.pop(pos), entry.canonical_hash)
        if entry.quarantined:
            self._hidden(entry)
        self._flush_break(at_end=False)
        if self._last_link is not None and entry.prev is not None and entry.prev != self._last_link:
            # Classified once we know whether anything follows it.
            self._break = (entry, self._last_link)
        self._last_link = entry.link_hash
        self._last_entry = entry
        self._last_pos_hash = (pos, entry.canonical_hash)
        self._expected = pos + 1
        s = self.summary
        if not entry.quarantined:
            s.records += 1
        if s.first_seq is None:
            s.first_seq = pos
            s.first_timestamp = entry.timestamp
        s.last_seq = pos
        s.head_hash = entry.link_hash
        if entry.timestamp is not None:
            s.last_timestamp = entry.timestamp
        if pos in self._watch:
            self.observed[pos] = (entry.canonical_hash, entry.timestamp)

    def _flush_break(self, *, at_end: bool) -> None:
        if self._break is None:
            return
        entry, expected = self._break
        self._break = None
        pos = entry.pos
        if at_end and self._last_entry is entry:
            self._add(
                Kind.INSERTED,
                pos,
                f"the last record does not link to record {pos - 1} (prev_hash {entry.prev}, expected "
                f"{expected}): it was appended by someone other than the chain's emitter, or record "
                f"{pos - 1} was changed and re-hashed",
                entry.record_id,
            )
        else:
            self._add(
                Kind.BROKEN_LINK,
                pos,
                f"prev_hash {entry.prev} does not match the hash of record {pos - 1} ({expected}): "
                f"record {pos - 1} was changed and its hash recomputed, or record {pos} was replaced",
                entry.record_id,
            )

    def _duplicate(self, entry: _Entry) -> None:
        self._add(
            Kind.INSERTED,
            entry.pos,
            f"a second row claims position {entry.pos} of the chain"
            + (" (an exact copy)" if self._last_pos_hash == (entry.pos, entry.canonical_hash) else "")
            + "; it is not part of the sealed chain",
            entry.record_id,
        )

    def _hidden(self, entry: _Entry) -> None:
        reason = self._quarantine_reasons.get(entry.pos)
        self._add(
            Kind.RECORD_HIDDEN,
            entry.pos,
            f"record {entry.pos} of the chain is in audit_quarantine, not in audit_logs, so queries on audit_logs "
            f"do not see it (quarantine reason: {reason!r}). A superuser can hide a record this way; if "
            "PostgreSQL really refused it, fix the cause and insert the record into audit_logs (its quarantined "
            "copy is then no finding)",
            entry.record_id,
        )

    def _conflict(self, quarantined: _Entry, stored_hash: str | None) -> None:
        """A quarantined record claims a position a stored row already holds.

        The sink quarantines a record when a *different* one already occupies
        its (chain, seq): a record submitted by someone other than the chain's
        emitter (for example through the OTLP ingest). It is not part of the
        chain; the links of the stored records decide which one is genuine (a
        forged stored record breaks the next link, reported separately).
        """
        self.summary.quarantined -= 1  # not one of the chain's records
        if stored_hash == quarantined.canonical_hash:
            return  # a copy of the stored record (stored again once the cause of a refusal was fixed)
        self.report.add(
            Finding(
                Kind.INSERTED,
                Severity.WARNING,
                self.chain_id,
                quarantined.pos,
                f"a different record (hash {quarantined.canonical_hash}) also claimed position {quarantined.pos} "
                f"and was refused into audit_quarantine; the stored record"
                + (f" (hash {stored_hash})" if stored_hash else "")
                + " holds the position. Someone other than the chain's emitter submitted a record for it",
                quarantined.record_id,
            )
        )

    def _skip_gap(self) -> None:
        nxt = min(set(self._pending) | set(self._quarantined))
        self._missing(self._expected, nxt - 1)
        self._expected = nxt
        self._last_link = self._archived_head if nxt == self._archived_seq + 1 else None
        self._drain(quarantined=True)

    def _missing(self, first: int, last: int) -> None:
        if first <= self._archived_seq:  # the archived part of a gap is not missing
            first = self._archived_seq + 1
            if first > last:
                return
        count = last - first + 1
        where = f"record {first}" if count == 1 else f"records {first}..{last}"
        self.report.add(
            Finding(Kind.MISSING, _E, self.chain_id, first, f"{where} of the chain are missing (deleted)", count=count)
        )

    def _sync_fast(self) -> None:
        """Fold what the fast path counted into the summary."""
        n = self._fast_n
        if not n:
            return
        s = self.summary
        first, last = self._fast_first, self._fast_last
        assert first is not None and last is not None  # set with every record the fast path counts
        s.records += n
        s.invalid += self._fast_invalid
        if s.first_seq is None:
            s.first_seq = first["seq"]
            s.first_timestamp = first["timestamp"]
        s.last_seq = last["seq"]
        s.last_timestamp = last["timestamp"]
        s.head_hash = self._last_link
        self._last_pos_hash = (last["seq"], self._last_link)
        self._last_entry = None
        self._fast_n = self._fast_invalid = 0
        self._fast_first = self._fast_last = None

    def finish(self) -> None:
        self._sync_fast()
        if self._expected <= self._archived_seq:  # the rows ended inside the archived prefix
            self._skip_archived(self._archived_seq + 1)
        while self._pending or self._quarantined:
            remaining = set(self._pending) | set(self._quarantined)
            nxt = min(remaining)
            if nxt < self._expected:  # a position already taken (cannot normally happen; never loop on it)
                entry = self._pending.pop(nxt, None)
                if entry is not None:
                    self._duplicate(entry)
                else:
                    self._conflict(self._quarantined.pop(nxt), None)
                continue
            if nxt > self._expected:
                self._missing(self._expected, nxt - 1)
                self._expected = nxt
                self._last_link = self._archived_head if nxt == self._archived_seq + 1 else None
            self._drain(quarantined=True)
        self._flush_break(at_end=True)
        if self.summary.quarantined:
            self.report.add(
                Finding(
                    Kind.QUARANTINED,
                    Severity.INFO,
                    self.chain_id,
                    None,
                    f"{self.summary.quarantined} record(s) of the chain are kept in audit_quarantine instead of "
                    "audit_logs (each reported as record_hidden)",
                    count=self.summary.quarantined,
                )
            )
        if self.summary.invalid:
            self.report.add(
                Finding(
                    Kind.INVALID_RECORDS,
                    Severity.INFO,
                    self.chain_id,
                    None,
                    f"{self.summary.invalid} record(s) are stored flagged with validation problems "
                    "(see the problems column)",
                    count=self.summary.invalid,
                )
            )

    # ------------------------------------------------------------------ details
    def _compare_columns(
        self,
        doc: dict[str, Any],
        expected: list[Any],
        columns: Sequence[Any],
        column_seq: int,
        canonical: bytes,
        json_texts: tuple[str | None, str | None] | None,
    ) -> None:
        texts = _json_texts(columns, json_texts)
        for index, (field, sealed, stored) in enumerate(zip(FIELDS, expected, columns, strict=True)):
            if field in _JSON_FIELDS:
                if json_column_equal(doc, field, stored, texts[field == "attributes"], canonical):
                    continue
                stored = texts[field == "attributes"]  # shown as stored, digits and all
            elif index in _INT_INDEXES:
                if sealed == stored and sealed.__class__ is stored.__class__:
                    continue
            elif sealed == stored or (field == "ip_address" and _same_ip(sealed, stored)):
                continue
            if index in (_SEQ_INDEX, _CHAIN_INDEX):
                self._add(
                    Kind.REORDERED,
                    column_seq,
                    f"column {field} is {stored!r} but the record was sealed with {sealed!r}",
                    doc.get("id"),
                )
            else:
                self._add(
                    Kind.MODIFIED,
                    doc.get("seq", column_seq),
                    f"column {field} was changed: stored {_short(stored)}, sealed {_short(sealed)}",
                    doc.get("id"),
                )

    def _add(self, kind: Kind, seq: int | None, detail: str, record_id: str | None = None) -> None:
        self.report.add(Finding(kind, _E, self.chain_id, seq, detail, record_id))


def _json_texts(
    columns: Sequence[Any], json_texts: tuple[str | None, str | None] | None
) -> tuple[str | bytes | None, str | bytes | None]:
    if json_texts is not None:
        return json_texts
    old, attrs = columns[_OLD_INDEX], columns[_ATTR_INDEX]
    return (None if old is None else orjson.dumps(old), None if attrs is None else orjson.dumps(attrs))


def _typed_same(
    doc: dict[str, Any], columns: Sequence[Any], canonical: bytes, json_texts: tuple[str | None, str | None] | None
) -> bool:
    """After ``==`` of every column with its field: also equal by type (``true`` is not ``1``) and,
    for the jsonb columns, numbers by exact decimal value (see :mod:`otel_audit.verify.exact`)."""
    for i in _INT_INDEXES:
        if columns[i].__class__ is not doc.get(FIELDS[i]).__class__:
            return False
    old_text, attrs_text = _json_texts(columns, json_texts)
    return json_column_equal(doc, "attributes", columns[_ATTR_INDEX], attrs_text, canonical) and json_column_equal(
        doc, "old_values", columns[_OLD_INDEX], old_text, canonical
    )


def _same_ip(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
