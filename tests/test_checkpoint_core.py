"""Keys, checkpoint documents, the checkpointer, witnesses and proofs on their own (no database)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from otel_audit.checkpointer import Checkpointer
from otel_audit.core.chain import KIND_CHECKPOINT, KIND_RECORD, Chain
from otel_audit.core.checkpoint import (
    CheckpointFormatError,
    SignatureStatus,
    parse_checkpoint,
    parse_envelope,
    sign_checkpoint,
)
from otel_audit.core.keys import (
    SigningKey,
    generate_signing_key,
    key_id_for,
    load_signing_key,
    load_trusted_key,
    write_keypair,
)
from otel_audit.core.proof import build_proof, verify_proof
from otel_audit.core.record import CHECKPOINT_DOMAIN, RECORD_DOMAIN, RecordBuilder
from otel_audit.errors import AuditConfigurationError, ChainClosed
from otel_audit.spool.spool import ChainSpool, SpoolConfig
from otel_audit.stats import PipelineStats
from otel_audit.witness import DirectoryWitness, WitnessPublisher, split_entry

CHAIN = "0b6c3f2e-6a43-4d8e-9a51-3c1f0e2d4b5a"
ATTRS = {
    "audit.action": "read",
    "audit.actor.id": "user-1",
    "audit.resource.type": "doc",
    "audit.resource.id": "d-1",
    "audit.result": "success",
}


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_signing_key()


def checkpoint(key: SigningKey, n: int = 1, **overrides):
    fields = dict(
        chain_id=CHAIN,
        n=n,
        seq=5,
        head="a" * 64,
        genesis="b" * 64,
        prev=None if n == 1 else "c" * 64,
        time_ns=1_795_000_000_123_456_789,
        interval_ms=10_000,
        closed=False,
    )
    fields.update(overrides)
    return sign_checkpoint(key, **fields)


# ---------------------------------------------------------------------- keys
def test_keygen_files_permissions_and_key_id(tmp_path: Path) -> None:
    key = generate_signing_key()
    private, public = write_keypair(key, tmp_path / "audit-signing")
    assert public == tmp_path / "audit-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    # The documented key id: first 32 hex characters of SHA-256 over the raw 32-byte public key.
    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(loaded, Ed25519PublicKey)
    raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.key_id == hashlib.sha256(raw).hexdigest()[:32] == key_id_for(raw)
    assert load_signing_key(private).key_id == load_trusted_key(public).key_id == key.key_id
    with pytest.raises(FileExistsError, match="--force"):
        write_keypair(generate_signing_key(), tmp_path / "audit-signing")
    assert load_signing_key(private).key_id == key.key_id  # untouched


def test_key_loading_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigurationError, match="otel-audit keygen --out"):
        load_signing_key(tmp_path / "missing")
    write_keypair(generate_signing_key(), tmp_path / "k")
    with pytest.raises(AuditConfigurationError, match="that is a public key"):
        load_signing_key(tmp_path / "k.pub")
    with pytest.raises(AuditConfigurationError, match="only the public key"):
        load_trusted_key(tmp_path / "k")
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(AuditConfigurationError, match="not a PEM public key"):
        load_trusted_key(tmp_path / "junk")


def test_a_group_readable_signing_key_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    private, _ = write_keypair(generate_signing_key(), tmp_path / "k")
    os.chmod(private, 0o644)
    with caplog.at_level(logging.WARNING, logger="otel_audit"):
        load_signing_key(private)
    assert "chmod 600" in caplog.text


# ---------------------------------------------------------------------- checkpoint documents
def test_checkpoint_bytes_follow_the_documented_format(key: SigningKey) -> None:
    cp = checkpoint(key, n=2, closed=True)
    doc = orjson.loads(cp.body)
    assert doc == {
        "v": 1,
        "type": "checkpoint",
        "chain_id": CHAIN,
        "n": 2,
        "seq": 5,
        "head": "a" * 64,
        "genesis": "b" * 64,
        "prev": "c" * 64,
        "time": "2026-11-18T11:06:40.123456Z",
        "interval_ms": 10_000,
        "closed": True,
        "key_id": key.key_id,
    }
    assert cp.body == rfc8785.dumps(doc)  # RFC 8785 canonical JSON, byte for byte
    assert cp.hash == hashlib.sha256(CHECKPOINT_DOMAIN + cp.body).hexdigest()
    public = key.verify_key().public
    public.verify(cp.signature, CHECKPOINT_DOMAIN + cp.body)  # raises if not
    with pytest.raises(Exception):  # the domain tag is part of what is signed
        public.verify(cp.signature, cp.body)
    assert cp.envelope == cp.body + b"\n" + base64.b64encode(cp.signature) + b"\n"
    again = parse_envelope(cp.envelope)
    assert again == cp
    assert again.signature_status({key.key_id: key.verify_key()}) is SignatureStatus.VALID


def test_signature_status_untrusted_and_bad(key: SigningKey) -> None:
    other = generate_signing_key()
    cp = checkpoint(key)
    assert cp.signature_status({other.key_id: other.verify_key()}) is SignatureStatus.UNTRUSTED_KEY
    forged = parse_checkpoint(cp.body.replace(b'"seq":5', b'"seq":6'), cp.signature)
    assert forged.signature_status({key.key_id: key.verify_key()}) is SignatureStatus.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.replace(b'"closed":false', b'"closed":0'), "closed"),
        (lambda b: b.replace(b'"seq":5', b'"seq":-5'), "seq"),
        (lambda b: b.replace(b'"seq":5', b'"seq":5.5'), "seq"),
        (lambda b: b.replace(b'"n":1', b'"n":0'), "n must"),
        (lambda b: b.replace(b'"head":"aaaa', b'"head":"AAAA'), "head"),
        (lambda b: b.replace(b'"v":1', b'"v":2'), "v1"),
        (lambda b: b.replace(b'{"chain_id"', b'{"extra":1,"chain_id"'), "fields differ"),
        (lambda b: b.replace(b'{"chain_id"', b'{ "chain_id"'), "canonical"),
        (lambda b: b.replace(b'"prev":null', b'"prev":"' + b"c" * 64 + b'"'), "prev must be null"),
        (lambda b: b[:-1], "not JSON"),
    ],
)
def test_malformed_checkpoint_bodies_are_refused(key: SigningKey, edit, message: str) -> None:
    cp = checkpoint(key)
    with pytest.raises(CheckpointFormatError, match=message):
        parse_checkpoint(edit(cp.body), cp.signature)


def test_envelope_must_have_exactly_two_lines(key: SigningKey) -> None:
    cp = checkpoint(key)
    with pytest.raises(CheckpointFormatError, match="no signature line"):
        parse_envelope(cp.body)
    with pytest.raises(CheckpointFormatError, match="base64"):
        parse_envelope(cp.body + b"\n!!!!\n")
    with pytest.raises(CheckpointFormatError, match="two lines"):
        parse_envelope(cp.envelope + b"extra\n")


# ---------------------------------------------------------------------- checkpointer
class RecordingKey:
    """A signing key that notes on which thread each signature was made."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.key_id = key.key_id
        self.threads: list[str] = []

    def sign(self, message: bytes) -> bytes:
        self.threads.append(threading.current_thread().name)
        return self.key.sign(message)


def spooled_chain(spool_dir: Path) -> tuple[ChainSpool, Chain]:
    spool = ChainSpool.create(
        SpoolConfig(directory=spool_dir, segment_bytes=1024 * 1024, max_bytes=64 * 1024 * 1024), CHAIN, "target"
    )
    return spool, Chain(spool, emitter={"kind": "test"}, chain_id=CHAIN)


def frames(spool: ChainSpool) -> list:
    return [frame for frame, _ in spool.frames_from(spool.start())]


def test_checkpoints_every_n_records_signed_off_the_callers_thread(spool_dir: Path, key: SigningKey) -> None:
    spool, chain = spooled_chain(spool_dir)
    recording = RecordingKey(key)
    checkpointer = Checkpointer(chain, recording, every_records=100, every_seconds=3600)  # type: ignore[arg-type]
    checkpointer.start()
    assert wait_for(lambda: checkpointer.last is not None)  # the first one, at start
    builder = RecordBuilder()
    for _ in range(2000):
        sealed = chain.seal(builder.build(ATTRS, time_unix_nano=time.time_ns()))
        if sealed.seq >= checkpointer.due_seq:  # what AuditPipeline.seal does
            checkpointer.poke(sealed.seq, sealed.hash)
    assert wait_for(lambda: checkpointer.last.seq > 2000 - 100)
    closing = checkpointer.close()
    assert closing is not None and closing.closed and closing.seq == 2000
    with pytest.raises(ChainClosed):
        chain.seal(builder.build(ATTRS, time_unix_nano=time.time_ns()))
    # Every checkpoint but the closing one was signed on the checkpointer's thread.
    assert set(recording.threads[:-1]) == {"otel-audit-checkpointer"}
    assert recording.threads[-1] == threading.current_thread().name

    # In the spool: each checkpoint names a head that precedes it, numbers run 1, 2, 3... and link.
    hashes = {0: chain.genesis_hash}
    previous = None
    checkpoints = []
    for frame in frames(spool):
        if frame.kind == KIND_RECORD:
            hashes[orjson.loads(frame.payload)["seq"]] = frame.digest.hex()
        elif frame.kind == KIND_CHECKPOINT:
            cp = parse_envelope(frame.payload)
            assert hashes[cp.seq] == cp.head
            assert cp.n == (previous.n + 1 if previous else 1)
            assert cp.prev == (previous.hash if previous else None)
            assert cp.genesis == chain.genesis_hash
            previous = cp
            checkpoints.append(cp)
    assert checkpoints[-1] == closing and [c.closed for c in checkpoints].count(True) == 1
    # The record that reaches the count is the one signed, however late the thread wakes; in a burst
    # faster than signing, the next count starts from the checkpoint actually signed.
    assert [c.seq for c in checkpoints[:2]] == [0, 100]
    assert all(b.seq - a.seq >= 100 or b.closed for a, b in zip(checkpoints, checkpoints[1:], strict=False))
    spool.close()


def test_records_sealed_while_the_first_checkpoint_is_signed_are_checkpointed_without_a_poke(
    spool_dir: Path, key: SigningKey
) -> None:
    """The race a forked child hit: its first records were sealed while the checkpointer signed the
    chain's first checkpoint, before due_seq was armed, so none of them poked; the thread then slept
    for the whole interval (an hour here) and the chain went unanchored past its policy."""
    spool, chain = spooled_chain(spool_dir)
    builder = RecordBuilder()

    class SealingKey(RecordingKey):
        def sign(self, message: bytes) -> bytes:
            if not self.threads:  # the first signature: other threads seal meanwhile
                for _ in range(12):
                    sealed = chain.seal(builder.build(ATTRS, time_unix_nano=time.time_ns()))
                    if sealed.seq >= checkpointer.due_seq:  # what AuditPipeline.seal does
                        checkpointer.poke(sealed.seq, sealed.hash)
            return super().sign(message)

    checkpointer = Checkpointer(chain, SealingKey(key), every_records=5, every_seconds=3600)  # type: ignore[arg-type]
    checkpointer.start()
    assert wait_for(lambda: checkpointer.last is not None and checkpointer.last.seq == 12, timeout=20), (
        checkpointer.last
    )
    checkpointer.close()


def test_an_idle_chain_keeps_signing_checkpoints(spool_dir: Path, key: SigningKey) -> None:
    spool, chain = spooled_chain(spool_dir)
    chain.seal(RecordBuilder().build(ATTRS, time_unix_nano=time.time_ns()))
    checkpointer = Checkpointer(chain, key, every_records=1000, every_seconds=0.05)
    checkpointer.start()
    assert wait_for(lambda: checkpointer.last is not None and checkpointer.last.n >= 4)
    checkpointer.close()
    idle = [parse_envelope(f.payload) for f in frames(spool) if f.kind == KIND_CHECKPOINT]
    assert len(idle) >= 5
    assert {(c.seq, c.head) for c in idle} == {(1, chain.head()[1])}  # nothing new, proven again and again
    assert len({c.time for c in idle}) == len(idle)  # each with its own time
    assert [c.closed for c in idle] == [False] * (len(idle) - 1) + [True]
    spool.close()


def test_a_refused_checkpoint_is_retried_not_fatal(spool_dir: Path, key: SigningKey, caplog) -> None:
    class FlakySink:
        def __init__(self) -> None:
            self.frames: list[tuple[int, bytes]] = []
            self.refuse = 2

        def append(self, kind: int, payload: bytes, digest: bytes) -> int:
            if kind == KIND_CHECKPOINT and self.refuse:
                self.refuse -= 1
                raise OSError("disk full")
            self.frames.append((kind, payload))
            return len(self.frames)

    sink = FlakySink()
    chain = Chain(sink, emitter={"kind": "test"}, chain_id=CHAIN)
    stats = PipelineStats()
    checkpointer = Checkpointer(chain, key, every_records=10, every_seconds=3600, stats=stats, retry_delay=0.01)
    with caplog.at_level(logging.ERROR, logger="otel_audit"):
        checkpointer.start()
        assert wait_for(lambda: checkpointer.last is not None)
    checkpointer.close()
    assert "could not write checkpoint 1" in caplog.text and "disk full" in stats.last_error
    numbers = [parse_envelope(p).n for k, p in sink.frames if k == KIND_CHECKPOINT]
    assert numbers == [1, 2]  # no gap in the numbering: a refused checkpoint is signed again


# ---------------------------------------------------------------------- witness
def test_directory_witness_is_append_only_and_idempotent(tmp_path: Path, key: SigningKey) -> None:
    witness = DirectoryWitness(tmp_path / "w")
    cp1, cp2 = checkpoint(key, 1), checkpoint(key, 2, seq=9)
    witness.write(cp1)
    witness.write(cp1)  # a replay: nothing new
    witness.write(cp2)
    files = sorted((tmp_path / "w" / CHAIN).iterdir())
    assert [f.name for f in files] == [
        f"000000000001-{cp1.hash[:16]}.checkpoint",
        f"000000000002-{cp2.hash[:16]}.checkpoint",
    ]
    assert files[0].read_bytes() == cp1.envelope + b"previous none\n"  # the first entry of the chain
    first = hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert files[1].read_bytes() == cp2.envelope + f"previous {files[0].name} {first}\n".encode()
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o444
    # A copy cut short by a crash cannot be replaced (WORM): the next write goes beside it.
    cp3 = checkpoint(key, 3, seq=12)
    torn = tmp_path / "w" / CHAIN / f"000000000003-{cp3.hash[:16]}.checkpoint"
    torn.write_bytes(cp3.envelope[:40])
    witness.write(cp3)
    second = hashlib.sha256(files[1].read_bytes()).hexdigest()
    beside = (torn.parent / f"000000000003-{cp3.hash[:16]}.2.checkpoint").read_bytes()
    assert beside == cp3.envelope + f"previous {files[1].name} {second}\n".encode()  # never links to a torn one
    entries = list(witness.read())
    assert len(entries) == 4 and sum(split_entry(e.data)[0] == cp3.envelope for e in entries) == 1
    # A new writer (another process replaying the spool) links to the newest entry it finds.
    again = DirectoryWitness(tmp_path / "w")
    cp4 = checkpoint(key, 4, seq=13)
    again.write(cp3)  # a replay: nothing new
    again.write(cp4)
    newest = hashlib.sha256(beside).hexdigest()
    link = f"previous 000000000003-{cp3.hash[:16]}.2.checkpoint {newest}\n".encode()
    assert (torn.parent / f"000000000004-{cp4.hash[:16]}.checkpoint").read_bytes() == cp4.envelope + link
    assert list(witness.read([CHAIN.replace("0", "1")])) == []


def test_an_unwritable_witness_is_loud_counted_and_retried(tmp_path: Path, key: SigningKey, caplog) -> None:
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory: the witness volume is not mounted")
    stats = PipelineStats()
    publisher = WitnessPublisher([DirectoryWitness(blocker / "witness")], stats)
    with caplog.at_level(logging.ERROR, logger="otel_audit.witness"):
        publisher.submit([checkpoint(key, 1), checkpoint(key, 2, seq=7)])
        assert not publisher.flush(30)
    assert stats.witness_failures == 2
    assert "cannot write checkpoint 1" in caplog.text and "The application continues" in caplog.text
    blocker.unlink()  # the volume is back
    publisher.submit([checkpoint(key, 3, seq=9)])  # the next checkpoint retries the waiting ones
    assert publisher.close(30)
    names = sorted(p.name[:12] for p in (blocker / "witness" / CHAIN).iterdir())
    assert names == ["000000000001", "000000000002", "000000000003"]
    assert stats.witness_failures == 2


# ---------------------------------------------------------------------- proofs
class ListSink:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes, bytes]] = []

    def append(self, kind: int, payload: bytes, digest: bytes) -> int:
        self.frames.append((kind, payload, digest))
        return len(self.frames)


@pytest.fixture
def proof_parts(key: SigningKey):
    chain = Chain(ListSink(), emitter={"kind": "test"}, chain_id=CHAIN)
    builder = RecordBuilder()
    sealed = [chain.seal(builder.build({**ATTRS, "n": i}, time_unix_nano=time.time_ns())) for i in range(10)]
    seq, head = chain.head()
    cp = sign_checkpoint(
        key,
        chain_id=CHAIN,
        n=1,
        seq=seq,
        head=head,
        genesis=chain.genesis_hash,
        prev=None,
        time_ns=time.time_ns(),
        interval_ms=10_000,
    )
    return sealed, cp


def test_a_proof_verifies_offline(proof_parts, key: SigningKey) -> None:
    sealed, cp = proof_parts
    proof = build_proof(sealed[3].record_id, [s.canonical for s in sealed[3:]], cp, created_ns=time.time_ns())
    result = verify_proof(orjson.loads(orjson.dumps(proof)), {key.key_id: key.verify_key()})
    assert result.valid, result.problems
    assert result.record["seq"] == 4 and result.record["id"] == sealed[3].record_id
    # The documented check, written independently: hashes, links, head.
    texts = proof["records"]
    hashes = [hashlib.sha256(RECORD_DOMAIN + t.encode()).hexdigest() for t in texts]
    assert all(orjson.loads(t)["prev_hash"] == h for t, h in zip(texts[1:], hashes, strict=False))
    assert hashes[-1] == orjson.loads(proof["checkpoint"])["head"]


def _tamper(proof: dict, how: str, key: SigningKey) -> dict:
    proof = orjson.loads(orjson.dumps(proof))
    if how == "record text":
        proof["records"][0] = proof["records"][0].replace("user-1", "user-2")
    elif how == "middle record":
        proof["records"][2] = proof["records"][2].replace('"n":5', '"n":6')
    elif how == "dropped record":
        del proof["records"][1]
    elif how == "truncated list":
        proof["records"].pop()
    elif how == "checkpoint head":
        head = orjson.loads(proof["checkpoint"])["head"]
        proof["checkpoint"] = proof["checkpoint"].replace(head, "0" * 64)
    elif how == "signature":
        raw = bytearray(base64.b64decode(proof["signature"]))
        raw[0] ^= 1
        proof["signature"] = base64.b64encode(bytes(raw)).decode()
    elif how == "record id":
        proof["record_id"] = proof["record_id"][:-1] + ("0" if proof["record_id"][-1] != "0" else "1")
    elif how == "other key":
        other = generate_signing_key()
        cp = parse_checkpoint(proof["checkpoint"].encode(), base64.b64decode(proof["signature"]))
        forged = sign_checkpoint(
            other,
            chain_id=cp.chain_id,
            n=cp.n,
            seq=cp.seq,
            head=cp.head,
            genesis=cp.genesis,
            prev=cp.prev,
            time_ns=time.time_ns(),
            interval_ms=cp.interval_ms,
        )
        proof["checkpoint"] = forged.body.decode()
        proof["signature"] = base64.b64encode(forged.signature).decode()
    return proof


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("record text", "does not link"),
        ("middle record", "does not link"),
        ("dropped record", "expected 5"),
        ("truncated list", "the records end at seq 9"),
        ("checkpoint head", "does not verify"),
        ("signature", "does not verify"),
        ("record id", "not the proven"),
        ("other key", "not among the trusted keys"),
    ],
)
def test_a_tampered_proof_is_invalid(proof_parts, key: SigningKey, how: str, problem: str) -> None:
    sealed, cp = proof_parts
    proof = build_proof(sealed[3].record_id, [s.canonical for s in sealed[3:]], cp, created_ns=time.time_ns())
    result = verify_proof(_tamper(proof, how, key), {key.key_id: key.verify_key()})
    assert not result.valid
    assert any(problem in p for p in result.problems), result.problems


def test_proof_of_the_checkpointed_record_itself(proof_parts, key: SigningKey) -> None:
    sealed, cp = proof_parts
    proof = build_proof(sealed[-1].record_id, [sealed[-1].canonical], cp, created_ns=time.time_ns())
    assert verify_proof(proof, {key.key_id: key.verify_key()}).valid
