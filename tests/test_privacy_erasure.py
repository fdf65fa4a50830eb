"""Erasure by crypto-shredding (issue 12, part 3).

Personal fields are encrypted under a per-subject key before sealing; erasing
the subject destroys the key. After that: ``verify`` exits 0 on the live
database and ``verify-archive`` on the archive, the subject's fields are
unreadable even with the key store, other subjects' fields are readable, the
erasure is itself an audit record, and a superuser who copied the database
before the erasure (without the key store) learned nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from otel_audit.archive import DirectoryStore, archive_database
from otel_audit.archive.query import archive_files
from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key, write_keypair
from otel_audit.core.record import RecordBuilder
from otel_audit.privacy import privacy_policy
from otel_audit.privacy.encrypt import ERASED, UNREADABLE, Decryptor, Encryptor
from otel_audit.privacy.keystore import KeyStore, init_keystore, master_keys
from otel_audit.privacy.pseudonym import new_key_line
from tests.harness import VALID, App, verify

pytestmark = pytest.mark.storage

ALICE, BOB = "alice@example.com", "bob@example.com"
ALICE_PHONE, BOB_PHONE = "+44 20 7946 0001", "+44 20 7946 0002"
ALICE_AGENT = "Mozilla/5.0 (alice-laptop-7f3a)"
# Looked for as a whole: a fragment such as "0077" turns up by chance in the hashes and ids (about 1 run in 20).
PATIENT_77_PHONE = "+44 20 7946 0077"


@pytest.fixture
def keystore(postgres) -> Iterator[str]:
    schema, dsn = postgres.new_schema(init=False)  # apart from the audit tables
    with psycopg.connect(dsn, autocommit=True) as conn:
        init_keystore(conn)
    yield dsn
    postgres.drop_schema(schema)


@pytest.fixture
def master(tmp_path: Path) -> Path:
    path = tmp_path / "master.ring"
    path.write_text(new_key_line("m1") + "\n")
    return path


def _rows(dsn: str) -> list[dict]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT row_to_json(t) FROM audit_logs t ORDER BY timestamp, seq")]


def _query(capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    assert cli(["query", *args, "--format", "json", "--wide"]) == 0
    return json.loads(capsys.readouterr().out)


def test_erase_a_subject_end_to_end(
    db: str, keystore: str, master: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ring = tmp_path / "pseudonym.ring"
    ring.write_text(new_key_line("p1") + "\n")
    key = generate_signing_key()  # signs the application's checkpoints and the archive
    app = App(
        db,
        tmp_path / "spool",
        keystore_dsn=keystore,
        master_key=master,
        pseudonym_keys=ring,
        signing_key=key,
        encrypt=["audit.old_values", "user_agent.original", "patient.phone"],
    )
    for i in range(3):
        app.log(
            **{
                "audit.actor.id": ALICE,
                "audit.action": "update",
                "audit.resource.id": f"a-{i}",
                "audit.old_values": {"email": ALICE, "phone": ALICE_PHONE},
                "user_agent.original": ALICE_AGENT,
                "patient.phone": ALICE_PHONE,
            }
        )
    app.log(
        **{
            "audit.actor.id": BOB,
            "audit.action": "update",
            "audit.resource.id": "b-0",
            "audit.old_values": {"email": BOB, "phone": BOB_PHONE},
            "patient.phone": BOB_PHONE,
        }
    )
    app.log(
        **{
            "audit.actor.id": BOB,
            "audit.subject.id": "patient-77",
            "audit.resource.id": "p-77",
            "audit.old_values": {"phone": PATIENT_77_PHONE},
        }
    )
    exported = app.exporter.get_finished_logs()
    assert app.close()
    # The OTLP export carries the ciphertext, not the values, and never the subject's identifier.
    text = str([dict(e.log_record.attributes) for e in exported])
    assert ALICE_PHONE not in text and "patient-77" not in text and PATIENT_77_PHONE not in text
    assert "otel_audit.subject_key" in text

    # A superuser copies the whole database before the erasure, but not the key store.
    copy = json.dumps(_rows(db))
    for plain in (ALICE, ALICE_PHONE, ALICE_AGENT, BOB, BOB_PHONE, "patient-77", PATIENT_77_PHONE):
        assert plain not in copy
    assert verify(db).ok

    # Readers with the key store see the values; without it, a marker.
    env = ["--dsn", db, "--pseudonym-keys", str(ring)]
    with_keys = [*env, "--keystore-dsn", keystore, "--master-key", str(master)]
    rows = _query(capsys, "actor", ALICE, *with_keys)
    assert len(rows) == 3 and all(r["old_values"] == {"email": ALICE, "phone": ALICE_PHONE} for r in rows)
    assert all(r["user_agent"] == ALICE_AGENT for r in rows)
    rows = _query(capsys, "actor", ALICE, *env)
    assert all(r["old_values"] == UNREADABLE and r["user_agent"] == UNREADABLE for r in rows)

    # An archive of everything, signed.
    _, public = write_keypair(key, tmp_path / "keys" / "archive")
    dest = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, dest, before=datetime(2100, 1, 1, tzinfo=timezone.utc), key=key)

    # The erasure.
    assert (
        cli(
            [
                "erase",
                "--subject",
                ALICE,
                "--dsn",
                db,
                "--keystore-dsn",
                keystore,
                "--master-key",
                str(master),
                "--actor",
                "dpo@example.com",
                "--reason",
                "GDPR Art. 17 request #42",
                "--spool-dir",
                str(tmp_path / "erase-spool"),
            ]
        )
        == 0
    )
    assert "destroyed" in capsys.readouterr().out

    # The trail still verifies, live and archived.
    assert verify(db).ok
    assert cli(["verify", "--dsn", db]) == 0
    assert cli(["verify-archive", str(dest.root), "--trusted-key", str(public)]) == 0
    capsys.readouterr()

    # Alice's fields are unreadable even with the key store; Bob's are not.
    rows = _query(capsys, "actor", ALICE, *with_keys)
    assert len(rows) == 3 and all(r["old_values"] == ERASED and r["user_agent"] == ERASED for r in rows)
    rows = {r["resource_id"]: r for r in _query(capsys, "actor", BOB, *with_keys)}
    assert rows["b-0"]["old_values"] == {"email": BOB, "phone": BOB_PHONE}
    assert rows["p-77"]["old_values"] == {"phone": PATIENT_77_PHONE}  # another subject: untouched

    # ...in the archive too.
    store = KeyStore(keystore, master_keys(master))
    reader = Decryptor(store)
    archived = []
    for path in archive_files(dest):
        archived.extend(
            json.loads(c) for c in pq.read_table(dest.root / path, columns=["canonical"])["canonical"].to_pylist()
        )
    by_id = {r.get("resource_id"): reader.reveal(r.get("old_values"), "old_values") for r in archived}
    assert by_id["a-0"] == ERASED and by_id["b-0"] == {"email": BOB, "phone": BOB_PHONE}

    # The superuser's old copy is no better: its ciphertexts name destroyed keys.
    old = json.loads(copy)
    assert reader.reveal(next(r for r in old if r["resource_id"] == "a-1")["old_values"], "old_values") == ERASED
    store.close()

    # The erasure is an audit record, which names key refs, never the subject.
    erasures = [r for r in _rows(db) if r["action"] == "otel_audit.subject_erased"]
    assert len(erasures) == 1
    record = erasures[0]
    assert record["actor_id"] == "dpo@example.com" and record["reason"] == "GDPR Art. 17 request #42"
    assert record["result"] == "success" and record["attributes"]["otel_audit.erased_keys"]
    assert ALICE not in json.dumps(_rows(db))
    with psycopg.connect(keystore) as conn:
        assert conn.execute("SELECT count(*) FROM audit_subject_keys WHERE wrapped_key IS NULL").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM audit_subject_keys WHERE wrapped_key IS NOT NULL").fetchone() == (2,)

    # Erasing again finds nothing to destroy (exit 1), and says so in the trail as well.
    assert (
        cli(
            [
                "erase",
                "--subject",
                ALICE,
                "--dsn",
                db,
                "--keystore-dsn",
                keystore,
                "--master-key",
                str(master),
                "--spool-dir",
                str(tmp_path / "erase-spool-2"),
            ]
        )
        == 1
    )
    assert verify(db).ok


def _draft(**attrs: object):
    return RecordBuilder().build({**VALID, **attrs}, time_unix_nano=1_700_000_000_000_000_000, body="x")


def test_fields_are_withheld_never_stored_plain_when_the_key_store_is_down(master: Path) -> None:
    store = KeyStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", master_keys(master))
    policy = privacy_policy(env={}, key_store=store)
    draft = _draft(**{"audit.old_values": {"phone": ALICE_PHONE}})
    policy.protect(draft)
    assert ALICE_PHONE not in json.dumps(draft.doc)
    assert draft.doc["old_values"].startswith("[withheld")
    assert any("key store is unavailable" in p for p in draft.problems)
    # While it is down, the next records do not wait for another connection attempt each.
    store._lookup_or_create = None  # type: ignore[method-assign,assignment]  # would raise TypeError if called
    again = _draft(**{"audit.old_values": {"phone": ALICE_PHONE}})
    policy.protect(again)
    assert again.doc["old_values"].startswith("[withheld")


def test_without_a_subject_fields_are_withheld_and_the_subject_id_is_never_stored(keystore: str, master: Path) -> None:
    store = KeyStore(keystore, master_keys(master))
    encryptor = Encryptor(store, ["audit.old_values"], ["audit.subject.id"])
    draft = _draft(**{"audit.old_values": {"phone": ALICE_PHONE}})
    encryptor.protect(draft.doc)
    assert draft.doc["old_values"] == "[withheld: no data subject]" and draft.problems
    draft = _draft(**{"audit.old_values": {"phone": ALICE_PHONE}, "audit.subject.id": "patient-77"})
    encryptor.protect(draft.doc)
    assert "patient-77" not in json.dumps(draft.doc)
    assert draft.doc["attributes"]["otel_audit.encrypted"] == ["audit.old_values"]
    assert store.refs_of_subject("patient-77") == [draft.doc["attributes"]["otel_audit.subject_key"]]
    # A ciphertext is bound to its field: moved elsewhere, it does not decrypt.
    reader = Decryptor(store)
    assert reader.reveal(draft.doc["old_values"], "old_values") == {"phone": ALICE_PHONE}
    assert reader.reveal(draft.doc["old_values"], "reason") == UNREADABLE
    store.close()
