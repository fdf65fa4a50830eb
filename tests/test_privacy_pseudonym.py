"""Pseudonymization (issue 12, part 2): keyed HMAC-SHA-256 pseudonyms, search by the plain identifier,
key rotation, and the same through an archive."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from otel_audit.archive import DirectoryStore, archive_database
from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key
from otel_audit.core.record import RecordBuilder
from otel_audit.errors import AuditConfigurationError
from otel_audit.privacy import privacy_policy
from otel_audit.privacy.pseudonym import PREFIX, Pseudonymizer, PseudonymKey, new_key_line, parse_key_ring
from tests.harness import VALID, App, verify

ALICE = "alice@example.com"
BOB = "bob@example.com"


def _ring(tmp_path: Path, *lines: str, name: str = "ring") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _draft(**attrs: object):
    return RecordBuilder().build({**VALID, **attrs}, time_unix_nano=1_700_000_000_000_000_000, body="viewed")


# ---------------------------------------------------------------- units
def test_a_pseudonym_is_keyed_deterministic_and_names_its_key() -> None:
    k1, k2 = PseudonymKey("k1", b"a" * 32), PseudonymKey("k2", b"b" * 32)
    p = k1.pseudonym(ALICE)
    assert p == k1.pseudonym(ALICE) and p.startswith(f"{PREFIX}k1:") and len(p.split(":")[2]) == 64
    assert p != k2.pseudonym(ALICE).replace("k2", "k1")  # another key: another pseudonym
    assert ALICE not in p and "alice" not in repr(k1) and "aaaa" not in repr(k1)
    assert Pseudonymizer([k2, k1]).candidates(ALICE) == [k2.pseudonym(ALICE), k1.pseudonym(ALICE)]


def test_configured_fields_are_replaced_in_the_document_and_written_back() -> None:
    policy = privacy_policy(
        env={},
        pseudonym_keys=[PseudonymKey("k1", b"x" * 32)],
        pseudonymize=[
            "audit.actor.id",
            "user.id",
            "client.address",
            "session.id",
            "audit.old_values.email",
            "patient.email",
        ],
    )
    draft = _draft(
        **{
            "audit.actor.id": ALICE,
            "user.id": ALICE,
            "session.id": "s-1",
            "client.address": "10.1.2.3",
            "audit.old_values": {"email": BOB, "dose": "5mg"},
            "patient.email": BOB,
        }
    )
    changes = policy.protect(draft)
    doc = draft.doc
    key = policy.pseudonymizer.current  # type: ignore[union-attr]
    assert doc["actor_id"] == doc["user_id"] == key.pseudonym(ALICE)  # one person: one pseudonym, across fields
    assert doc["session_id"] == key.pseudonym("s-1")
    assert "ip_address" not in doc  # an inet column cannot hold a pseudonym: it moves to attributes
    assert doc["attributes"]["client.address"] == key.pseudonym("10.1.2.3")
    assert doc["old_values"] == {"email": key.pseudonym(BOB), "dose": "5mg"}
    assert doc["attributes"]["patient.email"] == key.pseudonym(BOB)
    assert not doc["problems"]
    assert changes is not None and changes["audit.actor.id"] == key.pseudonym(ALICE)
    assert changes["audit.old_values"] == doc["old_values"]


def test_the_actor_fallback_to_user_id_is_protected_too() -> None:
    policy = privacy_policy(env={}, pseudonym_keys=[PseudonymKey("k1", b"x" * 32)], pseudonymize=["user.id"])
    attrs = {k: v for k, v in VALID.items() if k != "audit.actor.id"}
    draft = RecordBuilder().build({**attrs, "user.id": ALICE}, time_unix_nano=1, body="x")
    policy.protect(draft)
    expected = policy.pseudonymizer.current.pseudonym(ALICE)  # type: ignore[union-attr]
    assert draft.doc["actor_id"] == draft.doc["user_id"] == expected


def test_key_ring_errors_say_what_to_do(tmp_path: Path) -> None:
    assert [k.key_id for k in parse_key_ring(f"{new_key_line('new')}\n# old\n{new_key_line('old')}", source="t")] == [
        "new",
        "old",
    ]
    for text, message in [
        ("k1", "expected '<key id>:<base64 key>'"),
        ("k1:!!!", "not valid base64"),
        ("k1:YWJj", "too short"),
        (f"{new_key_line('a')},{new_key_line('a')}", "appears twice"),
    ]:
        with pytest.raises(AuditConfigurationError, match=message):
            parse_key_ring(text, source="t")
    with pytest.raises(AuditConfigurationError, match="no key"):
        privacy_policy(env={"OTEL_AUDIT_PSEUDONYMIZE": "user.id"})
    with pytest.raises(AuditConfigurationError, match="cannot read"):
        privacy_policy(env={"OTEL_AUDIT_PSEUDONYM_KEYS_FILE": str(tmp_path / "missing")})
    policy = privacy_policy(env={"OTEL_AUDIT_PSEUDONYM_KEYS": new_key_line("env1")})
    assert policy.pseudonymizer is not None and policy.pseudonymizer.current.key_id == "env1"
    assert "key" not in json.dumps(policy.describe()["pseudonymize"]).replace("key_id", "")


def test_privacy_new_key_puts_the_new_key_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ring = tmp_path / "ring"
    assert cli(["privacy", "new-key", "--id", "k1", "--ring", str(ring)]) == 0
    assert cli(["privacy", "new-key", "--id", "k2", "--ring", str(ring)]) == 0
    assert [k.key_id for k in parse_key_ring(ring.read_text(), source="r")] == ["k2", "k1"]
    assert ring.stat().st_mode & 0o777 == 0o600
    assert cli(["privacy", "new-key", "--id", "k2", "--ring", str(ring)]) == 2


# ---------------------------------------------------------------- end to end
def _query(capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    assert cli(["query", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.storage
def test_search_by_plain_identifier_finds_exactly_that_persons_records_across_key_rotation(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    old_ring = _ring(tmp_path, new_key_line("k1"), name="ring-old")
    app = App(db, tmp_path / "s1", pseudonym_keys=old_ring)
    for i in range(3):
        app.log(**{"audit.actor.id": ALICE, "audit.resource.id": f"old-{i}", "session.id": "sess-a"})
    app.log(**{"audit.actor.id": BOB, "audit.resource.id": "old-bob"})
    exported = app.exporter.get_finished_logs()
    assert app.close()
    # The OTLP export carries the pseudonym too, not the address.
    assert all(ALICE not in str(dict(e.log_record.attributes)) for e in exported)

    # Rotation: a new current key, the old one kept for searches.
    new_ring = _ring(tmp_path, new_key_line("k2"), *old_ring.read_text().splitlines(), name="ring-new")
    app = App(db, tmp_path / "s2", pseudonym_keys=new_ring)
    for i in range(2):
        app.log(**{"audit.actor.id": ALICE, "audit.resource.id": f"new-{i}"})
    app.log(**{"audit.actor.id": "carol@example.com", "audit.resource.id": "new-c"})
    assert app.close()

    with psycopg.connect(db) as conn:
        dump = " ".join(r[0] for r in conn.execute("SELECT row_to_json(t)::text FROM audit_logs t"))
        key_ids = sorted({r[0].split(":")[1] for r in conn.execute("SELECT actor_id FROM audit_logs")})
    for plain in (ALICE, BOB, "carol", "10.1.2.3", "sess-a"):
        i = dump.find(plain)
        assert i < 0, dump[max(0, i - 300) : i + 100]
    assert key_ids == ["k1", "k2"]
    assert verify(db).ok

    found = _query(capsys, "actor", ALICE, "--dsn", db, "--pseudonym-keys", str(new_ring))
    assert sorted(r["resource_id"] for r in found) == ["new-0", "new-1", "old-0", "old-1", "old-2"]
    found = _query(capsys, "--actor", BOB, "--dsn", db, "--pseudonym-keys", str(new_ring))
    assert [r["resource_id"] for r in found] == ["old-bob"]
    found = _query(capsys, "--session", "sess-a", "--dsn", db, "--pseudonym-keys", str(new_ring))
    assert len(found) == 3
    # Only the old key: only the old records; no key: nothing (the plain address is stored nowhere).
    found = _query(capsys, "actor", ALICE, "--dsn", db, "--pseudonym-keys", str(old_ring))
    assert sorted(r["resource_id"] for r in found) == ["old-0", "old-1", "old-2"]
    assert _query(capsys, "actor", ALICE, "--dsn", db) == []

    # The same search over an archive, alone and with the live database.
    dest = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, dest, before=datetime(2100, 1, 1, tzinfo=timezone.utc), key=generate_signing_key())
    found = _query(capsys, "actor", ALICE, "--archive", str(dest.root), "--pseudonym-keys", str(new_ring))
    assert sorted(r["resource_id"] for r in found) == ["new-0", "new-1", "old-0", "old-1", "old-2"]
    found = _query(capsys, "actor", ALICE, "--archive", str(dest.root), "--dsn", db, "--pseudonym-keys", str(new_ring))
    assert len(found) == 5
