"""``otel-audit privacy new-key|init-keystore`` and ``otel-audit erase`` (docs/privacy.md).

Exit codes: 0 done, 1 ``erase`` found no live key for the subject (nothing
erased; the request is still recorded), 2 usage, configuration or connection
error (nothing erased).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from otel_audit import settings
from otel_audit.cli.common import EXIT_INTEGRITY, EXIT_OK, UsageError, add_dsn, resolve_dsn
from otel_audit.errors import AuditConfigurationError, DatabaseUnavailable

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    privacy = sub.add_parser(
        "privacy",
        help="keys for pseudonymization and per-subject encryption",
        description="Key material for the privacy policy; see docs/privacy.md.",
    )
    psub = privacy.add_subparsers(dest="privacy_command", metavar="ACTION", required=True)
    new_key = psub.add_parser(
        "new-key",
        help="print (or append to a key ring file) a new pseudonym key line",
        description="A new random 256-bit pseudonym key as a key ring line '<id>:<base64>'. With --ring FILE the "
        "line is put first in FILE (mode 0600), so it becomes the current key and the older ones stay for "
        "searches. Without --ring it is printed.",
    )
    new_key.add_argument("--id", required=True, dest="key_id", help="the key id stored in each pseudonym (e.g. 2026a)")
    new_key.add_argument("--ring", type=Path, default=None, metavar="FILE", help="key ring file to put the key in")
    new_key.set_defaults(handler=run_new_key)

    init = psub.add_parser(
        "init-keystore",
        help="create the subject key store table (audit_subject_keys)",
        description="Create the table that holds the per-subject keys, in the database --keystore-dsn names (keep "
        "it apart from the audit tables: another database, or at least another schema). The writer role may read "
        "and add keys; erasing takes the owner.",
    )
    init.add_argument("--keystore-dsn", default=None, help="default: $OTEL_AUDIT_KEYSTORE_DSN")
    init.add_argument("--writer-role", default=None, help="role of the emitters (SELECT, INSERT)")
    init.add_argument("--reader-role", default=None, help="role of investigators who may decrypt (SELECT)")
    init.set_defaults(handler=run_init_keystore)

    erase = sub.add_parser(
        "erase",
        help="crypto-shred a data subject: destroy their key, record the erasure",
        description="Destroy every key of a data subject in the key store: their encrypted fields become "
        "unreadable in the database, in archives and in backups at once, and `otel-audit verify` still passes. "
        "The erasure is recorded as an audit record (action otel_audit.subject_erased) before the key store "
        "change is committed. Exit 0 erased, 1 no live key for this subject (recorded anyway), 2 error.",
    )
    erase.add_argument("--subject", required=True, help="the data subject's identifier, as logged")
    erase.add_argument("--actor", default=None, help="who performs the erasure (default: $USER)")
    erase.add_argument("--reason", default="erasure request (GDPR Art. 17)", help="recorded with the erasure")
    erase.add_argument("--keystore-dsn", default=None, help="default: $OTEL_AUDIT_KEYSTORE_DSN")
    erase.add_argument("--master-key", default=None, metavar="FILE", help="default: $OTEL_AUDIT_MASTER_KEY_FILE")
    erase.add_argument(
        "--spool-dir", type=Path, default=None, help="spool for the erasure record (default: a temporary directory)"
    )
    add_dsn(erase)
    erase.set_defaults(handler=run_erase)


def run_new_key(args: argparse.Namespace) -> int:
    from otel_audit.privacy.pseudonym import load_key_ring, new_key_line

    try:
        line = new_key_line(args.key_id)
        if args.ring is None:
            print(line)
            return EXIT_OK
        existing = ""
        if args.ring.exists():
            if any(k.key_id == args.key_id for k in load_key_ring(args.ring)):
                raise UsageError(f"{args.ring} already has a key with id {args.key_id!r}: choose another id")
            existing = args.ring.read_text(encoding="utf-8")
        tmp = args.ring.with_name(args.ring.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(line + "\n" + existing)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, args.ring)
    except AuditConfigurationError as exc:
        raise UsageError(str(exc)) from None
    print(f"otel-audit privacy: key {args.key_id!r} is now the current key of {args.ring}")
    return EXIT_OK


def _keystore_dsn(args: argparse.Namespace) -> str:
    dsn = args.keystore_dsn or settings.KEYSTORE_DSN.get()
    if not dsn:
        raise UsageError("no key store given: pass --keystore-dsn or set OTEL_AUDIT_KEYSTORE_DSN")
    return dsn


def run_init_keystore(args: argparse.Namespace) -> int:
    import psycopg

    from otel_audit.privacy.keystore import KEYSTORE_TABLE, init_keystore

    with psycopg.connect(_keystore_dsn(args), autocommit=True) as conn:
        init_keystore(conn, writer_role=args.writer_role, reader_role=args.reader_role)
    print(f"otel-audit privacy: key store table {KEYSTORE_TABLE} ready")
    return EXIT_OK


def run_erase(args: argparse.Namespace) -> int:
    import psycopg

    from otel_audit.configuration import checkpoint_options
    from otel_audit.core import attributes as A
    from otel_audit.core.record import RecordBuilder
    from otel_audit.pipeline import AuditPipeline, PipelineConfig
    from otel_audit.privacy.keystore import KeyStore, master_keys
    from otel_audit.spool.spool import SpoolConfig

    audit_dsn = resolve_dsn(args)
    try:
        store = KeyStore(_keystore_dsn(args), master_keys(args.master_key))
    except AuditConfigurationError as exc:
        raise UsageError(str(exc)) from None
    actor = args.actor or os.environ.get("USER") or "unknown"
    spool_dir = args.spool_dir or Path(tempfile.mkdtemp(prefix="otel-audit-erase-"))
    with psycopg.connect(store.dsn) as ks:  # one transaction: committed only once the erasure is recorded
        refs = store.erase(args.subject, conn=ks)
        pipeline = AuditPipeline(
            PipelineConfig(
                dsn=audit_dsn,
                spool=SpoolConfig(directory=spool_dir, block_timeout=5.0),
                application_name="otel-audit-erase",
                **checkpoint_options(),
            ),
            emitter={"service_name": "otel-audit-erase", "host_name": socket.gethostname()},
            emitter_kind="cli",
        )
        try:
            draft = RecordBuilder().build(
                {
                    A.AUDIT_ACTION: "otel_audit.subject_erased",
                    A.AUDIT_ACTOR_ID: actor,
                    A.AUDIT_ACTOR_TYPE: "admin",
                    A.AUDIT_RESOURCE_TYPE: "data_subject_keys",
                    # The key refs, never the subject's identifier: the trail must not learn it again.
                    A.AUDIT_RESOURCE_ID: ",".join(refs) or "none",
                    A.AUDIT_RESULT: "success" if refs else "failure",
                    A.AUDIT_REASON: args.reason,
                    "otel_audit.erased_keys": refs,
                },
                time_unix_nano=time.time_ns(),
                body=f"{len(refs)} subject key(s) destroyed" if refs else "erasure requested: no live subject key",
                severity_text="WARN",
                severity_number=13,
                scope="otel_audit.erase",
            )
            sealed = pipeline.seal(draft)
            if not pipeline.wait_committed(sealed, 30.0):
                raise DatabaseUnavailable(
                    "the erasure record was not committed to PostgreSQL within 30 s; nothing was "
                    "erased (the key store change is rolled back). Check the database and retry."
                )
        finally:
            pipeline.close(30.0)
        ks.commit()
    store.vacuum()
    if not refs:
        print(
            f"otel-audit erase: no live key for this subject; nothing to destroy (request recorded as "
            f"{sealed.record_id})",
            file=sys.stderr,
        )
        return EXIT_INTEGRITY
    print(f"otel-audit erase: {len(refs)} key(s) destroyed: {', '.join(refs)}; recorded as {sealed.record_id}")
    return EXIT_OK
