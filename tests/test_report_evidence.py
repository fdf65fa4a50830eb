"""``otel-audit evidence``: a pack an auditor checks offline, with otel-audit or without it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from otel_audit.core.checkpoint import parse_checkpoint
from tests.harness import App
from tests.test_checkpoints import tamper
from tests.test_output_escaping import cli
from tests.test_report import anchored, keys  # noqa: F401 (fixtures)

pytestmark = pytest.mark.storage


def unpack(pack: Path, into: Path) -> Path:
    with zipfile.ZipFile(pack) as z:
        z.extractall(into)
    return into / "evidence"


def evidence(trail: dict, out: Path, *args: str) -> subprocess.CompletedProcess:
    return cli(
        "evidence",
        "--dsn",
        trail["dsn"],
        "--trusted-key",
        str(trail["keys"].public),
        "--witness",
        str(trail["witness"]),
        "--out",
        str(out),
        *args,
    )


def test_a_pack_of_the_failed_and_denied_records_checks_offline(anchored: dict, tmp_path: Path) -> None:
    pack = tmp_path / "pack.zip"
    result = evidence(anchored, pack)
    assert result.returncode == 0, result.stderr
    assert "INTACT: evidence pack" in result.stderr and "9 record proof(s) of 9 chosen" in result.stderr
    root = unpack(pack, tmp_path / "x")
    names = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {
        "README.txt",
        "report.html",
        "report.json",
        "records.json",
        "MANIFEST.json",
        "SHA256SUMS",
        "check_proof.py",
        f"keys/{anchored['keys'].key_id}.pub",
    } <= names
    proofs = sorted(root.glob("proofs/*.json"))
    assert len(proofs) == 9  # mallory's 7 failures and 2 denials

    # 1. Every file is listed with its hash, and the hashes hold (what `sha256sum -c SHA256SUMS` does).
    sums = dict(reversed(line.split("  ", 1)) for line in (root / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == names - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # 2. Each proof verifies with otel-audit against the key in the pack, and with the independent checker.
    key = root / "keys" / f"{anchored['keys'].key_id}.pub"
    for proof in proofs:
        assert cli("verify-proof", str(proof), "--trusted-key", str(key)).returncode == 0
        independent = subprocess.run(
            [sys.executable, "-O", str(root / "check_proof.py"), str(proof), str(key)],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", "")},
        )
        assert independent.returncode == 0 and independent.stdout.startswith("VALID"), independent.stdout

    # 3. The checkpoints they rest on are in the pack, as signed envelopes.
    manifest = json.loads((root / "MANIFEST.json").read_text())
    covered = {json.loads(p.read_text())["checkpoint"] for p in proofs}
    envelopes = sorted(root.glob("checkpoints/*/*.checkpoint"))
    assert envelopes and len(envelopes) == len(covered)
    for envelope in envelopes:
        body, signature = envelope.read_bytes().split(b"\n")[:2]

        checkpoint = parse_checkpoint(body, base64.b64decode(signature))
        assert checkpoint.key_id == anchored["keys"].key_id and body.decode() in covered
    assert manifest["verdict"] == "INTACT" and manifest["unproven"] == [] and manifest["signatures_checked"] is True
    assert manifest["records_included"] == 9 and sorted(manifest["proofs"]) == sorted(p.stem for p in proofs)
    readme = (root / "README.txt").read_text()
    assert "sha256sum -c SHA256SUMS" in readme and "otel-audit verify-proof" in readme and "check_proof.py" in readme
    assert "INTACT" in readme and "no archive was given" in readme


def test_a_proof_changed_in_the_pack_is_refused_offline(anchored: dict, tmp_path: Path) -> None:
    pack = tmp_path / "pack.zip"
    assert evidence(anchored, pack, "--actor", "alice", "--all-results").returncode == 0
    root = unpack(pack, tmp_path / "x")
    proof = sorted(root.glob("proofs/*.json"))[0]
    data = json.loads(proof.read_text())
    data["records"][0] = data["records"][0].replace('"alice"', '"someone"')
    proof.write_text(json.dumps(data))
    key = root / "keys" / f"{anchored['keys'].key_id}.pub"
    assert cli("verify-proof", str(proof), "--trusted-key", str(key)).returncode == 1
    independent = subprocess.run(
        [sys.executable, str(root / "check_proof.py"), str(proof), str(key)], capture_output=True, text=True
    )
    assert independent.returncode == 1 and independent.stdout.startswith("INVALID")
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert check.returncode != 0


def test_a_trace_or_session_pack_proves_its_whole_story(anchored: dict, tmp_path: Path) -> None:
    pack = tmp_path / "pack.zip"
    result = evidence(anchored, pack, "--session", "s-alice")
    assert result.returncode == 0, result.stderr
    root = unpack(pack, tmp_path / "x")
    assert len(list(root.glob("proofs/*.json"))) == 5  # every record of the session, whatever its result
    report = json.loads((root / "report.json").read_text())
    assert [t["kind"] for t in report["timelines"]] == ["session"] and len(report["timelines"][0]["records"]) == 5


def test_a_pack_of_a_tampered_trail_says_so_and_exits_1(anchored: dict, tmp_path: Path) -> None:
    tamper(anchored["dsn"], "DELETE FROM audit_logs WHERE actor_id = 'bob'")
    pack = tmp_path / "pack.zip"
    result = evidence(anchored, pack)
    assert result.returncode == 1 and "INTEGRITY FAILURE" in result.stderr
    root = unpack(pack, tmp_path / "x")
    assert json.loads((root / "MANIFEST.json").read_text())["verdict"] == "INTEGRITY FAILURE"
    assert "INTEGRITY FAILURE" in (root / "README.txt").read_text()


def test_records_that_cannot_be_proven_are_listed_with_the_reason(db: str, spool_dir: Path, tmp_path: Path) -> None:
    app = App(db, spool_dir)  # no signing key: nothing can be proven
    for _ in range(3):
        app.log(**{"audit.result": "denied"})
    assert app.close()
    pack = tmp_path / "pack.zip"
    result = cli("evidence", "--dsn", db, "--out", str(pack), "--archive", str(tmp_path / "archive"))
    assert result.returncode == 0, result.stderr
    assert "no proof for 3 records" in result.stderr and "signing key" in result.stderr
    root = unpack(pack, tmp_path / "x")
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert len(manifest["unproven"]) == 3 and manifest["proofs"] == [] and manifest["signatures_checked"] is False
    assert manifest["archive"]["location"] == str(tmp_path / "archive")
    assert "NOT checked" in (root / "README.txt").read_text()


def test_evidence_usage_errors(db: str, tmp_path: Path) -> None:
    for args in (["--limit", "0"], ["--result", "maybe"], ["--since", "x"]):
        result = cli("evidence", "--dsn", db, "--out", str(tmp_path / "p.zip"), *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "p.zip").exists()
    assert cli("evidence", "--dsn", db).returncode == 2  # --out is required


def test_a_pack_carries_the_manifests_of_the_archive_that_holds_its_records(db: str, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from otel_audit.archive import DirectoryStore, archive_database
    from otel_audit.core.keys import generate_signing_key, write_keypair
    from tests.trail import TrailChain, ns, store

    key = generate_signing_key()
    _, public = write_keypair(key, tmp_path / "keys" / "signing")
    chain = TrailChain(key)
    chain.log_many("2024-02-01T00:00:00Z", 6, step_seconds=86400, **{"audit.result": "denied"})
    chain.checkpoint(ns("2024-03-01T00:00:00Z"))
    chain.log_many("2025-02-01T00:00:00Z", 3, step_seconds=86400, **{"audit.result": "denied"})
    chain.checkpoint(ns("2025-03-01T00:00:00Z"), closed=True)
    store(db, chain)
    dest = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        assert archive_database(conn, dest, before=datetime(2025, 1, 1, tzinfo=timezone.utc), key=key).records == 6

    pack = tmp_path / "pack.zip"
    result = cli(
        "evidence",
        "--dsn",
        db,
        "--trusted-key",
        str(public),
        "--since",
        "2024-01-01",
        "--until",
        "2025-12-31",
        "--archive",
        str(dest.root),
        "--out",
        str(pack),
    )
    assert result.returncode == 0, result.stderr
    assert "9 record proof(s)" in result.stderr and "1 archive manifest(s)" in result.stderr
    root = unpack(pack, tmp_path / "x")
    (manifest_file,) = root.glob("archive/manifests/*")
    assert manifest_file.read_bytes() == (dest.root / "manifests" / manifest_file.name).read_bytes()
    meta = json.loads((root / "MANIFEST.json").read_text())
    archived = meta["archive"]["records_archived"]
    records = json.loads((root / "records.json").read_text())["records"]
    in_2024 = {r["id"] for r in records if r["timestamp"].startswith("2024")}
    assert set(archived) == in_2024 and len(in_2024) == 6 and set(archived.values()) == {manifest_file.name}
    assert "6 of the chosen records are in its runs" in (root / "README.txt").read_text()
    # The manifest in the pack is the archive's own: verify-archive accepts the archive it came from.
    assert cli("verify-archive", str(dest.root), "--trusted-key", str(public)).returncode == 0
