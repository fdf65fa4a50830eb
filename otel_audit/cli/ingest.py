"""``otel-audit serve``: the OTLP/HTTP ingest for audit records from any language."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from otel_audit import settings
from otel_audit.cli.common import EXIT_ERROR, EXIT_OK, Deferred, UsageError, add_dsn, resolve_deferred, resolve_dsn

if TYPE_CHECKING:  # the ingest is imported when `serve` runs, not when the parser is built
    from otel_audit.ingest import TokenSet

TOKENS_ENV = settings.INGEST_TOKENS.name

_log = logging.getLogger("otel_audit.ingest")


def _default(name: str) -> Deferred:
    """The ingest's own default for the option (IngestConfig), looked up when needed."""
    return Deferred("otel_audit.ingest.service", "IngestConfig", name)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="receive audit records over OTLP/HTTP (from any language, through the collector)",
        description="An OTLP/HTTP logs receiver (POST /v1/logs; protobuf or JSON; gzip). Audit-tagged records "
        "are sealed into this process's own chain, records sealed by an otel-audit processor are stored under "
        "their original chain, other records are acknowledged and ignored. A request is answered 200 only once "
        "its audit records are committed to PostgreSQL; 429/503 with Retry-After tell the sender to retry. "
        f"Bearer tokens come from --token-file (one per line: TOKEN [name=NAME] [services=PATTERN,...]) and "
        f"${TOKENS_ENV} (entries separated by ';'); a token bound to services may deliver records only for those.",
    )
    add_dsn(parser)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=int, default=4318, help="port (default: 4318, the OTLP/HTTP convention)")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="accepted bearer tokens, one per line: TOKEN [name=NAME] [services=PATTERN[,PATTERN...]]",
    )
    parser.add_argument(
        "--insecure-no-auth", action="store_true", help="accept requests without a token (testing only; logged)"
    )
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--spool-dir", type=Path, help=f"local spool directory (default: {settings.SPOOL_DIR.cli_help()})"
    )
    parser.add_argument(
        "--audit-logger",
        action="append",
        metavar="SCOPE",
        default=None,
        help="instrumentation scope (logger) whose records are audit records, with its children; repeatable "
        "(default: $OTEL_AUDIT_LOGGERS, comma-separated)",
    )
    parser.add_argument(
        "--event-prefix",
        metavar="PREFIX",
        default=None,
        help="records whose event name starts with PREFIX are audit records (default: $OTEL_AUDIT_EVENT_PREFIX)",
    )
    anchoring = parser.add_argument_group(
        "checkpoints (as otel_audit.configure(): sign the ingest's own chain so `verify --trusted-key` anchors it)"
    )
    anchoring.add_argument(
        "--signing-key",
        type=Path,
        metavar="PEM",
        default=None,
        help="Ed25519 private key written by `otel-audit keygen` (default: $OTEL_AUDIT_SIGNING_KEY); without one "
        "the ingest's chain has no signed checkpoints and `verify --trusted-key` fails it as unanchored",
    )
    anchoring.add_argument(
        "--witness-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="copy every committed checkpoint to this directory, outside PostgreSQL (default: $OTEL_AUDIT_WITNESS_DIR)",
    )
    anchoring.add_argument(
        "--checkpoint-records",
        type=int,
        metavar="N",
        default=None,
        help=f"sign a checkpoint every N records (default: {settings.CHECKPOINT_RECORDS.cli_help()})",
    )
    anchoring.add_argument(
        "--checkpoint-interval",
        type=float,
        metavar="SECONDS",
        default=None,
        help=f"and every SECONDS, idle or not (default: {settings.CHECKPOINT_INTERVAL.cli_help()})",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=_default("max_body_bytes"),
        help="largest request body, compressed and decompressed (default: %(default)s)",
    )
    limits.add_argument(
        "--max-records",
        type=int,
        default=_default("max_records"),
        help="most log records in one request (default: %(default)s)",
    )
    limits.add_argument(
        "--max-attributes",
        type=int,
        default=_default("max_attributes"),
        help="most top-level attributes kept per record (default: %(default)s)",
    )
    limits.add_argument(
        "--max-record-bytes",
        type=int,
        default=None,
        help=f"largest sealed record (default: {settings.MAX_RECORD_BYTES.cli_help()})",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=_default("max_connections"),
        help="concurrent connections (default: %(default)s)",
    )
    limits.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=_default("max_inflight_bytes"),
        help="request bytes held at once before answering 429 (default: %(default)s)",
    )
    limits.add_argument(
        "--commit-timeout",
        type=float,
        default=_default("commit_timeout"),
        help="seconds to wait for PostgreSQL before answering 503 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-backlog-bytes",
        type=int,
        default=_default("max_backlog_bytes"),
        help="uncommitted bytes before answering 429 (default: %(default)s)",
    )
    limits.add_argument(
        "--dedup-capacity",
        type=int,
        default=_default("dedup_capacity"),
        help="records remembered for retries of requests not yet answered 200 (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from otel_audit.ingest import IngestConfig, IngestServer, IngestService, tls_context
    from otel_audit.pipeline import AuditPipeline, PipelineConfig
    from otel_audit.privacy.policy import privacy_policy
    from otel_audit.spool.spool import SpoolConfig

    resolve_deferred(args)
    dsn = resolve_dsn(args)
    tokens = _tokens(args)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give both (PEM files) or neither")
    ssl_context = tls_context(str(args.tls_cert), str(args.tls_key)) if args.tls_cert else None
    config = IngestConfig(
        max_body_bytes=args.max_body_bytes,
        max_records=args.max_records,
        max_attributes=args.max_attributes,
        max_connections=args.max_connections,
        max_inflight_bytes=max(args.max_inflight_bytes, args.max_body_bytes),
        commit_timeout=args.commit_timeout,
        max_backlog_bytes=args.max_backlog_bytes,
        audit_loggers=tuple(args.audit_logger) if args.audit_logger is not None else settings.LOGGERS.get(),
        event_prefix=args.event_prefix or settings.EVENT_PREFIX.get(),
        dedup_capacity=args.dedup_capacity,
        # The same policy, variables and defaults as configure(): redaction is on unless turned off.
        privacy=privacy_policy(),
    )
    privacy_described = config.privacy.describe()
    max_record_bytes = settings.MAX_RECORD_BYTES.value(args.max_record_bytes)
    # The same settings, variables and start-up errors as otel_audit.configure() (an unreadable key stops here).
    from otel_audit.configuration import checkpoint_options  # not at import: other commands stay light

    checkpoints = checkpoint_options(
        signing_key=args.signing_key,
        witness_dir=args.witness_dir,
        checkpoint_records=args.checkpoint_records,
        checkpoint_interval=args.checkpoint_interval,
    )
    key = checkpoints["signing_key"]
    _check_schema(dsn)

    # The sink thread gives the GIL up on every write to PostgreSQL; with request
    # threads busy sealing, getting it back takes up to the switch interval (5 ms by
    # default) each time, and PostgreSQL idles meanwhile. 1 ms measured ~20% more
    # records/s (benchmarks/bench_ingest.py). Process-wide, hence here and not in the library.
    sys.setswitchinterval(0.001)
    spool = SpoolConfig(directory=args.spool_dir or settings.SPOOL_DIR.get(), block_timeout=1.0)
    pipeline = AuditPipeline(
        PipelineConfig(
            dsn=dsn,
            spool=spool,
            max_record_bytes=max_record_bytes,
            application_name="otel-audit-ingest",
            privacy=privacy_described,
            **checkpoints,
        ),
        emitter={
            "service_name": "otel-audit-ingest",
            "host_name": socket.gethostname(),
            "listen": f"{args.host}:{args.port}",
        },
        emitter_kind="ingest",
    )
    try:
        server = IngestServer(
            IngestService(pipeline, config), tokens, host=args.host, port=args.port, ssl_context=ssl_context
        )
    except OSError as exc:
        pipeline.close(5.0)
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}; choose another --port or --host") from exc

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    signing = (
        "no signing key"
        if key is None
        else (
            f"checkpoints signed by key {key.key_id} every {checkpoints['checkpoint_records']} records and "
            f"{checkpoints['checkpoint_interval']:g}s"
        )
    )
    witnessed = "".join(f"; witness {w.description}" for w in checkpoints["witnesses"])
    print(
        f"otel-audit serve: listening on {server.url} (chain {pipeline.chain_id}; "
        f"{'no authentication' if tokens is None else _describe_tokens(tokens)}; {signing}{witnessed}; "
        f"spool {spool.directory})",
        file=sys.stderr,
        flush=True,
    )
    if key is None:  # after the start line, which tools wait for
        _log.warning(
            "otel-audit serve: no signing key (--signing-key / OTEL_AUDIT_SIGNING_KEY), so the records this ingest "
            "seals are not anchored by signed checkpoints and `otel-audit verify --trusted-key` fails its chains as "
            "unanchored; create one with `otel-audit keygen --out PATH`"
        )
    stop.wait()
    print("otel-audit serve: stopping; finishing requests in progress", file=sys.stderr, flush=True)
    if server.shutdown(timeout=30.0):
        return EXIT_OK
    print(
        f"otel-audit serve: some sealed records were not committed before stopping; they are safe in "
        f"{spool.directory} and are written by the next otel-audit process using it",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _tokens(args: argparse.Namespace) -> TokenSet | None:
    configured = args.token_file is not None or settings.INGEST_TOKENS.get() is not None
    if args.insecure_no_auth:
        if configured:
            raise UsageError(
                f"--insecure-no-auth contradicts the configured tokens (--token-file / {TOKENS_ENV}); drop one"
            )
        return None
    from otel_audit.ingest import TokenSet

    tokens = TokenSet.from_environment(args.token_file)
    if not len(tokens):
        raise UsageError(
            f"no ingest tokens: pass --token-file FILE (one token per line) or set {TOKENS_ENV}=token1,token2 "
            "(generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`); "
            "--insecure-no-auth disables authentication for tests"
        )
    return tokens


def _describe_tokens(tokens: TokenSet) -> str:
    """``3 token(s): collector-eu (services payroll), ...``: names and bindings, never a token."""
    return f"{len(tokens)} token(s): " + ", ".join(
        identity.name if identity.services is None else f"{identity.name} (services {','.join(identity.services)})"
        for identity in tokens.identities
    )


def _check_schema(dsn: str) -> None:
    """Refuse to start against a database without the otel-audit tables; tolerate one that is down."""
    import psycopg

    from otel_audit.sink.schema import SCHEMA_VERSION, current_version

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name="otel-audit-ingest") as conn:
            version = current_version(conn)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _log.warning(
            "otel-audit serve: PostgreSQL is not reachable (%s); starting anyway, audit records are refused "
            "with 503 until it is",
            text,
        )
        return
    if version < SCHEMA_VERSION:
        raise UsageError(
            f"the database has otel-audit schema version {version}, this otel-audit needs {SCHEMA_VERSION}: "
            "run `otel-audit db init --dsn ...` first"
        )
