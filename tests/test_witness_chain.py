"""Witness entries form a chain of their own; misnamed entries are errors (issue 9, item 8).

Each entry names the previous entry written for its chain (file name and
SHA-256 of its bytes). Deleting or editing an entry in the middle is a
``witness_gap`` error; a file whose name disagrees with the checkpoint it
holds is ``witness_name_mismatch``. Old entries without the link still verify,
with a warning. Deleting the *newest* entries is not detectable from the
entries themselves: that is what storage the attacker cannot delete from is
for (documented, and shown here so the docs claim nothing more).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from otel_audit.cli.main import main
from otel_audit.witness import split_entry
from tests.test_checkpoints import Keys, check, errors, make_keys, rows, tamper
from tests.test_checkpoints import trail as trail  # the fixture: 30 records, checkpoints 1..4

pytestmark = pytest.mark.storage


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def witness_dir(tmp_path: Path) -> Path:
    return tmp_path / "witness"


def entries(witness: Path, db: str) -> list[Path]:
    ((chain_id,),) = rows(db, "SELECT chain_id::text FROM audit_chains")
    return sorted((witness / chain_id).iterdir())


def writable(path: Path) -> None:
    os.chmod(path, 0o644)  # the attacker owns the directory (entries are created 0444)


def test_entries_are_chained(trail: str, witness_dir: Path) -> None:
    files = entries(witness_dir, trail)
    assert len(files) == 4
    links = [split_entry(f.read_bytes())[1] for f in files]
    assert links[0].name is None and [link.name for link in links[1:]] == [f.name for f in files[:-1]]


def test_deleting_a_middle_witness_entry_is_a_gap(trail: str, keys: Keys, witness_dir: Path) -> None:
    files = entries(witness_dir, trail)
    files[1].unlink()  # checkpoint 2: the database still has it, but the witness chain is broken
    report = check(trail, [keys.public], witness_dir)
    assert errors(report) == [("witness_gap", 20)], [str(f) for f in report.findings]
    assert f"names the previous witness entry {files[1].name}, which is not in" in report.errors[0].detail
    base = ["verify", "--dsn", trail, "--trusted-key", str(keys.public), "--witness", str(witness_dir)]
    assert main(base) == 1


def test_editing_a_middle_witness_entry_is_a_gap(trail: str, keys: Keys, witness_dir: Path) -> None:
    files = entries(witness_dir, trail)
    writable(files[1])
    # Replace checkpoint 2's entry by checkpoint 1's bytes: a validly signed checkpoint, wrong place.
    files[1].write_bytes(files[0].read_bytes())
    report = check(trail, [keys.public], witness_dir)
    kinds = {kind for kind, _ in errors(report)}
    assert kinds == {"witness_gap", "witness_name_mismatch"}, [str(f) for f in report.findings]
    gap = next(f for f in report.errors if f.kind.value == "witness_gap")
    assert "was edited or replaced" in gap.detail
    # An edit that makes the entry unreadable is no longer taken for a torn write: its successor names it.
    files[1].write_bytes(b"garbage\n")
    report = check(trail, [keys.public], witness_dir)
    assert ("witness_gap", 20) in errors(report)


def test_a_witness_file_whose_name_disagrees_with_its_body_is_an_error(
    trail: str, keys: Keys, witness_dir: Path
) -> None:
    files = entries(witness_dir, trail)
    newest = files[-1]
    # The newest entry moved to a name claiming another checkpoint number (nothing links to the newest one).
    newest.rename(newest.with_name("000000000009" + newest.name[12:]))
    report = check(trail, [keys.public], witness_dir)
    assert errors(report) == [("witness_name_mismatch", 30)], [str(f) for f in report.findings]
    # ... and a checkpoint of one chain filed under another chain's directory.
    other = witness_dir / "00000000-0000-4000-8000-000000000000"
    other.mkdir()
    shutil.copy(files[0], other / files[0].name)
    report = check(trail, [keys.public], witness_dir)
    assert ("witness_name_mismatch", 0) in errors(report)


def test_old_unchained_entries_still_verify_with_a_warning(trail: str, keys: Keys, witness_dir: Path) -> None:
    for f in entries(witness_dir, trail):
        envelope, _ = split_entry(f.read_bytes())
        writable(f)
        f.write_bytes(envelope)  # the two-line form earlier versions wrote
    report = check(trail, [keys.public], witness_dir)
    assert report.ok and [f.kind.value for f in report.warnings] == ["witness_unchained"]
    assert report.warnings[0].count == 4


def test_deleting_the_newest_witness_entries_is_not_detected_by_the_chain(
    trail: str, keys: Keys, witness_dir: Path
) -> None:
    """The documented limit: the newest entries can be removed without a trace in the witness itself.

    Together with deleting the database's newest checkpoints and records, a directory witness the
    attacker can delete from gives no more than no witness. Only WORM / Object Lock storage helps.
    """
    files = entries(witness_dir, trail)
    # A rollback by someone who can delete from PostgreSQL and from the witness directory (no key needed):
    # the newest records, the newest checkpoint (the closing one) and its witness entry.
    tamper(trail, "DELETE FROM audit_logs WHERE seq > 20", "DELETE FROM audit_checkpoints WHERE n = 4")
    files[-1].unlink()
    report = check(trail, [keys.public], witness_dir, now=time.time() + 86_400)
    assert report.ok, [str(f) for f in report.errors]
    assert [f.kind.value for f in report.warnings] == ["unclosed"]  # it looks like a crash, nothing more
