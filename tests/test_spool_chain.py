"""The spool and the chain on their own (no database): ordering, crashes, limits, threads."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import orjson
import pytest

from otel_audit.core.chain import KIND_GENESIS, KIND_RECORD, Chain
from otel_audit.core.record import GENESIS_DOMAIN, RECORD_DOMAIN, RecordBuilder
from otel_audit.errors import SpoolFull
from otel_audit.spool.frames import FRAME_HEADER
from otel_audit.spool.spool import ChainSpool, SpoolConfig

MiB = 1024 * 1024
ATTRS = {
    "audit.action": "read",
    "audit.actor.id": "user-1",
    "audit.resource.type": "doc",
    "audit.resource.id": "d-1",
    "audit.result": "success",
}


def config(directory: Path, **kw) -> SpoolConfig:
    kw.setdefault("segment_bytes", MiB)
    kw.setdefault("max_bytes", 64 * MiB)
    return SpoolConfig(directory=directory, **kw)


def payload(i: int, size: int = 300) -> bytes:
    return (b'{"i":%d,"pad":"' % i) + b"x" * size + b'"}'


def append(spool: ChainSpool, i: int, size: int = 300) -> int:
    data = payload(i, size)
    return spool.append(KIND_RECORD, data, hashlib.sha256(RECORD_DOMAIN + data).digest())


def test_frames_come_back_in_order_across_segments(spool_dir: Path) -> None:
    spool = ChainSpool.create(config(spool_dir), "chain-a", "target")
    for i in range(10_000):  # ~3 MiB: several segment rolls
        append(spool, i)
    frames = list(spool.frames_from(spool.start()))
    assert [orjson.loads(f.payload)["i"] for f, _ in frames] == list(range(10_000))
    assert len({p.name for p in spool.path.glob("*.seg")}) >= 3
    spool.close()


def test_concurrent_reader_sees_every_frame_exactly_once(spool_dir: Path) -> None:
    """Regression: frames appended while the reader finished a segment were skipped."""
    spool = ChainSpool.create(config(spool_dir), "chain-b", "target")
    total = 40_000
    seen: list[int] = []

    def writer() -> None:
        for i in range(total):
            append(spool, i, size=200)

    thread = threading.Thread(target=writer)
    thread.start()
    position = spool.start()
    deadline = time.monotonic() + 60
    while len(seen) < total and time.monotonic() < deadline:
        batch = spool.read(position, 777, 1 << 30)
        for frame, end in batch:
            seen.append(orjson.loads(frame.payload)["i"])
            position = end
        if batch:
            spool.release_before(position)
    thread.join()
    assert seen == list(range(total))
    spool.close()


def test_torn_tail_is_ignored_on_replay(spool_dir: Path) -> None:
    spool = ChainSpool.create(config(spool_dir, fsync="never"), "chain-c", "target")
    for i in range(5):
        append(spool, i)
    # Simulate a power loss mid-frame: a header claiming a payload that never fully arrived.
    mm, off = spool._mm, spool._write_off  # the test plays the kernel
    FRAME_HEADER.pack_into(mm, off, KIND_RECORD, 300, b"\x00" * 32)
    mm[off + FRAME_HEADER.size : off + FRAME_HEADER.size + 10] = b"0123456789"
    spool.close()  # releases the lock like a dead process would

    adopted = ChainSpool.adopt(spool_dir / "chain-c", config(spool_dir), "target")
    assert adopted is not None
    frames = list(adopted.frames_from(adopted.start()))
    assert [orjson.loads(f.payload)["i"] for f, _ in frames] == [0, 1, 2, 3, 4]
    adopted.close(remove=True)
    assert not (spool_dir / "chain-c").exists()


def test_a_live_owners_spool_is_never_adopted(spool_dir: Path) -> None:
    owner = ChainSpool.create(config(spool_dir), "chain-d", "target")
    append(owner, 1)
    assert ChainSpool.adopt(owner.path, config(spool_dir), "target") is None
    owner.close()
    assert ChainSpool.adopt(owner.path, config(spool_dir), "another-database") is None
    adopted = ChainSpool.adopt(owner.path, config(spool_dir), "target")
    assert adopted is not None
    adopted.close()


def test_full_spool_blocks_then_refuses_without_consuming_a_sequence_number(spool_dir: Path) -> None:
    spool = ChainSpool.create(config(spool_dir, max_bytes=2 * MiB, block_timeout=0.3), "chain-e", "target")
    chain = Chain(spool, emitter={"kind": "test"}, max_record_bytes=64 * 1024)
    builder = RecordBuilder()
    sealed = 0
    started = time.monotonic()
    with pytest.raises(SpoolFull, match="full"):
        while True:
            chain.seal(builder.build({**ATTRS, "pad": "p" * 2000}, time_unix_nano=time.time_ns()))
            sealed += 1
    assert time.monotonic() - started >= 0.3  # it waited for the sink before refusing
    assert chain.head()[0] == sealed  # the refused record consumed no sequence number
    # Once the sink releases space, sealing continues with the next number.
    spool.release_before(spool.end)
    nxt = chain.seal(builder.build(ATTRS, time_unix_nano=time.time_ns()))
    assert nxt.seq == sealed + 1
    spool.close()


def test_drop_policy_refuses_at_once(spool_dir: Path) -> None:
    spool = ChainSpool.create(config(spool_dir, max_bytes=2 * MiB, when_full="drop"), "chain-f", "target")
    started = time.monotonic()
    with pytest.raises(SpoolFull):
        for i in range(100_000):
            append(spool, i, size=2000)
    assert time.monotonic() - started < 5
    spool.close()


def test_threads_never_fork_the_chain(spool_dir: Path) -> None:
    spool = ChainSpool.create(config(spool_dir), "chain-g", "target")
    chain = Chain(spool, emitter={"kind": "test"})
    builder = RecordBuilder()
    threads, per_thread = 8, 1500

    def work() -> None:
        for _ in range(per_thread):
            chain.seal(builder.build(ATTRS, time_unix_nano=time.time_ns()))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    frames = list(spool.frames_from(spool.start()))
    assert frames[0][0].kind == KIND_GENESIS
    prev = hashlib.sha256(GENESIS_DOMAIN + frames[0][0].payload).hexdigest()
    seqs, ids = [], set()
    for frame, _ in frames[1:]:
        doc = orjson.loads(frame.payload)
        assert doc["prev_hash"] == prev
        assert frame.digest == hashlib.sha256(RECORD_DOMAIN + frame.payload).digest()
        prev = frame.digest.hex()
        seqs.append(doc["seq"])
        ids.add(doc["id"])
    assert seqs == list(range(1, threads * per_thread + 1))
    assert len(ids) == threads * per_thread
    spool.close()
