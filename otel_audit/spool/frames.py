"""The spool's on-disk frame format.

A segment file is a fixed-size, pre-allocated file::

    segment := MAGIC (8 bytes) frame* zero-fill
    frame   := kind (1 byte) length (uint32 LE) digest (32 bytes) payload (length bytes)

``kind`` is ``G`` (chain genesis), ``R`` (record), ``C`` (checkpoint) or
``D`` (the genesis of a chain the OTLP ingest relays, with the name of the
token that delivered it: see :func:`delivered_genesis_frame`); ``digest`` is
SHA-256 over the kind's domain tag followed by the payload, which for a record
is exactly the record hash. The kind byte is written last,
so a frame whose kind is zero was never completed; a frame whose digest does
not match its payload was torn by a power loss. Either ends the readable data
of the segment.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from otel_audit.core.chain import KIND_CHECKPOINT, KIND_GENESIS, KIND_RECORD
from otel_audit.core.record import CHECKPOINT_DOMAIN, GENESIS_DOMAIN, RECORD_DOMAIN

if TYPE_CHECKING:
    import mmap

__all__ = [
    "FRAME_HEADER",
    "KIND_DELIVERED_GENESIS",
    "MAGIC",
    "Frame",
    "delivered_genesis_frame",
    "iter_frames",
    "parse_delivered_genesis",
]

MAGIC = b"OTAUDSP1"
FRAME_HEADER = struct.Struct("<BI32s")
HEADER_TAIL = struct.Struct("<I32s")  # everything but the kind byte

KIND_DELIVERED_GENESIS = ord("D")
#: A spool-internal tag: ``D`` frames never leave the spool (the sink stores their genesis and name).
DELIVERED_GENESIS_DOMAIN = b"otel-audit.spool.delivered-genesis.v1\x00"
_NAME_LENGTH = struct.Struct(">H")

_DOMAINS = {
    KIND_RECORD: RECORD_DOMAIN,
    KIND_GENESIS: GENESIS_DOMAIN,
    KIND_CHECKPOINT: CHECKPOINT_DOMAIN,
    KIND_DELIVERED_GENESIS: DELIVERED_GENESIS_DOMAIN,
}


def delivered_genesis_frame(genesis: bytes, delivered_by: str) -> tuple[bytes, bytes]:
    """(payload, digest) of a ``D`` frame: name length (uint16 BE), name (UTF-8), genesis bytes."""
    name = delivered_by.encode("utf-8")
    payload = _NAME_LENGTH.pack(len(name)) + name + genesis
    return payload, hashlib.sha256(DELIVERED_GENESIS_DOMAIN + payload).digest()


def parse_delivered_genesis(payload: bytes) -> tuple[bytes, str]:
    """(genesis bytes, token name) of a ``D`` frame's payload."""
    (length,) = _NAME_LENGTH.unpack_from(payload)
    end = _NAME_LENGTH.size + length
    return payload[end:], payload[_NAME_LENGTH.size : end].decode("utf-8")


class Frame(NamedTuple):
    kind: int
    payload: bytes
    digest: bytes
    end: int  # offset just past this frame in its segment


# tuple.__new__ skips the NamedTuple's Python-level constructor: the sink
# decodes every frame on a thread that shares the GIL with the application.
_new_frame = tuple.__new__


def iter_frames(buffer: bytes | memoryview | mmap.mmap, start: int, stop: int, *, check: bool) -> Iterator[Frame]:
    """Yield complete frames of ``buffer[start:stop]``.

    ``check=True`` recomputes each digest (for files left by another process,
    which may end in a torn frame); a live in-process reader skips that.
    Iteration stops at the first incomplete or damaged frame.
    """
    pos = start
    header_size = FRAME_HEADER.size
    while pos + header_size <= stop:
        kind, length, digest = FRAME_HEADER.unpack_from(buffer, pos)
        if kind == 0:
            return
        end = pos + header_size + length
        if kind not in _DOMAINS or end > stop:
            return
        payload = bytes(buffer[pos + header_size : end])
        if check and hashlib.sha256(_DOMAINS[kind] + payload).digest() != digest:
            return
        yield _new_frame(Frame, (kind, payload, digest, end))
        pos = end
