"""Identifiers: chain ids (UUIDv4) and record ids (UUIDv8 = chain prefix + sequence).

A record id must be unique and cheap: ``uuid.uuid4()`` costs ~2 µs (a syscall
and an object) while the whole sealing budget is a few µs. A record id is
therefore the chain's random 74-bit prefix followed by the record's sequence
number as 48 bits, laid out as an RFC 9562 version-8 UUID::

    xxxxxxxx-xxxx-8xxx-Vxxx-SSSSSSSSSSSS     (V in 8..b: the variant bits)

Unique as long as chain prefixes are (74 random bits) and a chain stays below
2**48 records; one f-string on the hot path.
"""

from __future__ import annotations

import os
import uuid

__all__ = ["MAX_SEQUENCE", "new_chain_id", "record_id_prefix"]

MAX_SEQUENCE = 2**48 - 1


def new_chain_id() -> str:
    """A fresh random chain id (UUIDv4): chains are created rarely."""
    return str(uuid.uuid4())


def record_id_prefix() -> str:
    """The first 24 characters of every record id of one chain (random, version 8)."""
    r = os.urandom(10).hex()  # 80 random bits, 74 used
    variant = "89ab"[int(r[15], 16) & 0x3]
    return f"{r[:8]}-{r[8:12]}-8{r[12:15]}-{variant}{r[16:19]}-"
