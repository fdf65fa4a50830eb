"""State of the audit pipeline, read from outside the running processes.

``otel-audit status`` reads the spool directory (what each process has not yet
written, its live counters in ``status.json``, spools of dead processes still
to replay) and/or the database (per-chain heads and last commits, the
quarantine). The status file's writer, :func:`write_process_status`, is here
too, beside its reader, so the two agree on its name and contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import psycopg

from otel_audit.core.chain import KIND_RECORD
from otel_audit.sink.schema import current_version
from otel_audit.sink.writer import describe_database, same_database
from otel_audit.spool.frames import MAGIC, iter_frames
from otel_audit.spool.spool import list_chain_dirs, read_committed

__all__ = ["database_status", "spool_status"]


def spool_status(root: Path, *, identity: dict[str, Any] | None = None, dsn_argument: str = "DSN") -> dict[str, Any]:
    """What the spool directory ``root`` holds.

    ``identity``: the database the caller is looking at (:func:`database_identity`),
    to say whether an orphaned spool belongs to it; ``dsn_argument``: how to write the
    ``--dsn`` of the ``otel-audit replay`` command suggested for orphaned spools.
    """
    chains = []
    for path in list_chain_dirs(root):
        chains.append(_chain_dir_status(path, identity, dsn_argument))
    quarantine = root / "quarantine"
    return {
        "spool_dir": str(root),
        "exists": root.is_dir(),
        "chains": chains,
        "total_bytes": sum(c["bytes"] for c in chains),
        "orphaned_chains": sum(1 for c in chains if not c["owner_alive"]),
        "quarantine_files": len(list(quarantine.glob("*.json"))) if quarantine.is_dir() else 0,
    }


def _chain_dir_status(path: Path, identity: dict[str, Any] | None, dsn_argument: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((path / "meta.json").read_text())
    live = _lock_held(path / "lock")
    segments = sorted(path.glob("*.seg"))
    info: dict[str, Any] = {
        "chain_id": meta.get("chain_id", path.name),
        "path": str(path),
        "relay": bool(meta.get("relay")),  # records of other emitters' chains (OTLP ingest)
        "pid": meta.get("pid"),
        "owner_alive": live,
        "segments": len(segments),
        "bytes": sum(p.stat().st_size for p in segments),
    }
    status_file = path / STATUS_FILE
    if status_file.exists():
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads(status_file.read_text())
            stats["age_seconds"] = round(time.time() - stats.get("written_unix", 0), 1)
            info["process"] = stats
    if not live:
        # A dead process's spool: count what is waiting to be replayed, that is the
        # records past the position its sink last committed (the segment holding that
        # position is kept, and with it records already stored).
        committed = read_committed(path)
        pending, oldest = 0, None
        for segment in segments:
            data = segment.read_bytes()
            if not data.startswith(MAGIC):
                continue
            try:
                base = int(segment.stem) * len(data)
            except ValueError:
                continue
            for frame in iter_frames(data, len(MAGIC), len(data), check=True):
                if frame.kind == KIND_RECORD and base + frame.end > committed:
                    pending += 1
                    if oldest is None:
                        with contextlib.suppress(Exception):
                            oldest = json.loads(frame.payload)["timestamp"]
        info["records_in_spool"] = pending
        info["oldest_record"] = oldest
        info.update(_orphan_advice(path, meta, identity, dsn_argument))
    return info


def _orphan_advice(
    path: Path, meta: dict[str, Any], identity: dict[str, Any] | None, dsn_argument: str
) -> dict[str, Any]:
    """Who will replay a dead process's spool, and the command that replays it now."""
    written_for = meta.get("database")
    command = f"otel-audit replay --spool {shlex.quote(str(path))} --dsn {dsn_argument}"
    if not written_for:
        configured = meta.get("dsn") or "a DSN not recorded"
        note = (
            f"owner is gone and never reached a database (it was configured with {configured}): only a process "
            "configured with that same DSN replays it by itself. If that DSN was wrong, replay it into the right "
            f"database: {command}"
        )
    elif identity is not None and not same_database(written_for, identity):
        command = f"otel-audit replay --spool {shlex.quote(str(path))} --dsn DSN_OF_THAT_DATABASE"
        note = (
            f"owner is gone; it belongs to {describe_database(written_for)}, not to the database given here. "
            f"Its next process there replays it, or now: {command}"
        )
    else:
        note = (
            f"owner is gone: the next process that uses this spool directory and writes to "
            f"{describe_database(written_for)} replays it (whatever its DSN looks like); to replay it now: {command}"
        )
    return {"database": written_for, "written_for_dsn": meta.get("dsn"), "note": note, "replay_command": command}


def _lock_held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def database_status(conn: psycopg.Connection) -> dict[str, Any]:
    version = current_version(conn)
    if version == 0:
        return {
            "schema_version": 0,
            "missing_tables": ["audit_chains", "audit_logs", "audit_quarantine"],
            "note": "otel-audit tables not found in this database / search_path: check --dsn, or run "
            "`otel-audit db init` if this is a new database",
        }
    missing = [
        table
        for table in ("audit_chains", "audit_logs", "audit_quarantine")
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None  # type: ignore[index]
    ]
    if missing:
        return {
            "schema_version": version,
            "missing_tables": missing,
            "note": f"schema version {version} is recorded but table(s) {', '.join(missing)} are missing (dropped?): "
            "run `otel-audit verify`, then `otel-audit db init` to recreate them",
        }
    chains = conn.execute(
        """
        SELECT c.chain_id::text, c.emitter, c.created_at,
               (SELECT max(seq) FROM audit_logs l WHERE l.chain_id = c.chain_id) AS head_seq,
               (SELECT max(inserted_at) FROM audit_logs l WHERE l.chain_id = c.chain_id) AS last_commit
        FROM audit_chains c ORDER BY c.created_at DESC LIMIT 50
        """
    ).fetchall()
    quarantined = conn.execute("SELECT count(*) FROM audit_quarantine").fetchone()[0]  # type: ignore[index]
    last = conn.execute("SELECT max(inserted_at) FROM audit_logs").fetchone()[0]  # type: ignore[index]
    registered = conn.execute("SELECT count(*) FROM audit_chains").fetchone()[0]  # type: ignore[index]
    return {
        "schema_version": version,
        "chains_registered": registered,
        "last_commit": last.isoformat() if last else None,
        "quarantined_records": quarantined,
        "recent_chains": [
            {
                "chain_id": chain_id,
                "service": (emitter or {}).get("service_name"),
                "host": (emitter or {}).get("host_name"),
                "pid": (emitter or {}).get("pid"),
                "created": created.isoformat(),
                "head_seq": head,
                "last_commit": last_commit.isoformat() if last_commit else None,
            }
            for chain_id, emitter, created, head, last_commit in chains
        ],
    }


# ---------------------------------------------------------------------- the status file
#: A running sink's live counters (PipelineStats.snapshot() plus pid, chain id and time), beside its
#: spool; :func:`spool_status` reads it back as each chain's ``process``.
STATUS_FILE = "status.json"


def write_process_status(spool_path: Path, counters: dict[str, Any], *, chain_id: str) -> None:
    """Replace the status file in ``spool_path`` (written aside, then renamed: never read half-written).

    The sink calls it about once a second. A failure to write is ignored: the
    file serves ``otel-audit status`` and is never a reason to stop storing records.
    """
    data = {**counters, "pid": os.getpid(), "chain_id": chain_id, "written_unix": time.time()}
    tmp = spool_path / (STATUS_FILE + ".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(data))
        os.replace(tmp, spool_path / STATUS_FILE)
