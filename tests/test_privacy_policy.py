"""The privacy policy in one place (issue 12, part 4): configure(), environment variables and
``otel-audit serve`` give records the same treatment, and the policy in force (never its keys)
is sealed into each chain's genesis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from otel_audit.privacy.keystore import init_keystore
from otel_audit.privacy.pseudonym import new_key_line
from tests.harness import App, verify
from tests.ingest_harness import AUDIT, record, request
from tests.serve_harness import ServeProcess

pytestmark = pytest.mark.storage

TOKEN = "privacy-token-0123456789abcdef"
ALICE = "alice@example.com"
PAN = "4111111111111111"


@pytest.fixture
def keystore(postgres) -> Iterator[str]:
    schema, dsn = postgres.new_schema(init=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        init_keystore(conn)
    yield dsn
    postgres.drop_schema(schema)


def _genesis(dsn: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: json.loads(bytes(r[1])) for r in conn.execute("SELECT chain_id::text, genesis FROM audit_chains")}


def test_the_default_policy_is_sealed_in_the_genesis(db: str, tmp_path: Path) -> None:
    default = App(db, tmp_path / "s1", service="plain")
    default.log()
    assert default.close()
    genesis = _genesis(db)[default.audit.chain_id]
    assert genesis["privacy"] == {
        "redact": {
            "names": [
                "password",
                "passwd",
                "passphrase",
                "secret",
                "token",
                "authorization",
                "apikey",
                "accesskey",
                "privatekey",
                "credential",
                "cookie",
            ],
            "values": ["bearer", "jwt", "private_key", "pan"],
        },
        "pseudonymize": None,
        "encrypt": None,
    }


def test_configure_and_environment_give_the_same_policy(
    db: str, keystore: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring_line, master_line = new_key_line("p2026"), new_key_line("m1")
    (tmp_path / "ring").write_text(ring_line)
    (tmp_path / "master").write_text(master_line)
    by_argument = App(
        db,
        tmp_path / "s1",
        pseudonym_keys=tmp_path / "ring",
        keystore_dsn=keystore,
        master_key=tmp_path / "master",
        redact_names=["ssn"],
        encrypt=["audit.old_values"],
    )
    by_argument.log(**{"audit.actor.id": ALICE, "audit.old_values": {"x": 1}})
    assert by_argument.close()
    monkeypatch.setenv("OTEL_AUDIT_PSEUDONYM_KEYS_FILE", str(tmp_path / "ring"))
    monkeypatch.setenv("OTEL_AUDIT_KEYSTORE_DSN", keystore)
    monkeypatch.setenv("OTEL_AUDIT_MASTER_KEY_FILE", str(tmp_path / "master"))
    monkeypatch.setenv("OTEL_AUDIT_REDACT_NAMES", "ssn")
    monkeypatch.setenv("OTEL_AUDIT_ENCRYPT", "audit.old_values")
    by_env = App(db, tmp_path / "s2")
    by_env.log(**{"audit.actor.id": ALICE, "audit.old_values": {"x": 1}})
    assert by_env.close()
    genesis = _genesis(db)
    one, two = genesis[by_argument.audit.chain_id]["privacy"], genesis[by_env.audit.chain_id]["privacy"]
    assert one == two
    assert one["pseudonymize"] == {
        "algorithm": "hmac-sha256",
        "key_id": "p2026",
        "fields": ["audit.actor.id", "user.id", "client.address", "session.id"],
    }
    assert one["encrypt"]["fields"] == ["audit.old_values"] and one["encrypt"]["key_store"]["master_key_id"] == "m1"
    assert "ssn" in one["redact"]["names"]
    text = json.dumps(genesis)
    for secret in (ring_line.split(":", 1)[1], master_line.split(":", 1)[1]):
        assert secret not in text
    with psycopg.connect(db) as conn:
        actors = {r[0] for r in conn.execute("SELECT actor_id FROM audit_logs")}
    assert len(actors) == 1 and next(iter(actors)).startswith("hmac-sha256:p2026:")  # the same pseudonym both ways
    assert verify(db).ok


def test_serve_applies_the_policy_from_the_same_variables(db: str, keystore: str, tmp_path: Path) -> None:
    ring_line = new_key_line("p1")
    (tmp_path / "ring").write_text(ring_line)
    (tmp_path / "master").write_text(new_key_line("m1"))
    serve = ServeProcess(
        db,
        tmp_path / "spool",
        env={
            "OTEL_AUDIT_INGEST_TOKENS": TOKEN,
            "OTEL_AUDIT_PSEUDONYM_KEYS_FILE": str(tmp_path / "ring"),
            "OTEL_AUDIT_KEYSTORE_DSN": keystore,
            "OTEL_AUDIT_MASTER_KEY_FILE": str(tmp_path / "master"),
        },
    )
    try:
        attrs = {
            **AUDIT,
            "audit.actor.id": ALICE,
            "password": "hunter2-xyz",
            "audit.old_values": {"card": PAN},
            "user_agent.original": "Go-http-client/1.1",
        }
        assert serve.export(request([record(attrs, body=f"paid with {PAN}")]), token=TOKEN).status == 200
    finally:
        assert serve.stop() == 0, serve.log
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT row_to_json(t)::text, actor_id, old_values, user_agent, message FROM audit_logs t"
        ).fetchone()
    assert row is not None
    text, actor, old_values, agent, message = row
    for plain in (ALICE, "hunter2-xyz", PAN, "Go-http-client"):
        assert plain not in text and plain not in serve.log
    assert actor.startswith("hmac-sha256:p1:")
    assert old_values.startswith("aead:") and agent.startswith("aead:")
    assert message == "paid with 411111******1111"
    genesis = _genesis(db)[serve.chain_id]
    assert genesis["privacy"]["pseudonymize"]["key_id"] == "p1" and genesis["privacy"]["encrypt"] is not None
    assert verify(db).ok
