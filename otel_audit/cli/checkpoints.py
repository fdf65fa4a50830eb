"""``otel-audit keygen``, ``prove`` and ``verify-proof`` (``verify``'s anchoring flags are in verify.py).

Exit codes: ``keygen`` and ``prove`` 0 done, 1 the database's chain fails
its own checks (``prove``), 2 usage, configuration or connection error (also
a record that is not anchored yet). ``verify-proof`` 0 valid, 1 invalid,
2 error (file or key unreadable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from otel_audit.cli.common import EXIT_ERROR, EXIT_INTEGRITY, EXIT_OK, UsageError, add_dsn, connect
from otel_audit.cli.output import escape_text, print_json, write_line
from otel_audit.errors import AuditConfigurationError, NotAnchoredError, ProofUnavailable

__all__ = ["register"]


# ---------------------------------------------------------------------- commands
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing checkpoints",
        description="Write a new Ed25519 private key to PATH (PEM PKCS#8, mode 0600) and its public key to "
        "PATH.pub (PEM). Give the emitter PATH (OTEL_AUDIT_SIGNING_KEY) and the verifier PATH.pub "
        "(--trusted-key).",
    )
    keygen.add_argument("--out", required=True, type=Path, metavar="PATH", help="private key file to create")
    keygen.add_argument("--force", action="store_true", help="replace existing files")
    keygen.set_defaults(handler=run_keygen)

    prove = sub.add_parser(
        "prove",
        help="write self-contained evidence that a record is part of a signed chain",
        description="Write a proof of one record: its hashed bytes, those of every record up to the next "
        "signed checkpoint, and that checkpoint. Check it offline with `otel-audit verify-proof`. Exit 0 "
        "written, 1 the database's chain does not hold together, 2 error (unknown record, not anchored yet).",
    )
    prove.add_argument("record_id", metavar="RECORD_ID", help="the record's id (audit.record.id)")
    add_dsn(prove)
    prove.add_argument("--out", default=None, metavar="FILE", help="write here (default: standard output)")
    prove.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="PATH.pub",
        help="also check the checkpoint's signature before writing (repeatable)",
    )
    prove.set_defaults(handler=run_prove)

    check = sub.add_parser(
        "verify-proof",
        help="check a record proof offline against trusted public keys",
        description="Check a proof written by `otel-audit prove`, with no database. Exit 0 valid, 1 invalid, "
        "2 error (file or key unreadable).",
    )
    check.add_argument("file", metavar="FILE", help="the proof ('-' for standard input)")
    check.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="PATH.pub",
        required=True,
        help="public key of the emitter (repeatable)",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=run_verify_proof)


def run_keygen(args: argparse.Namespace) -> int:
    from otel_audit.core.keys import generate_signing_key, write_keypair

    key = generate_signing_key()
    try:
        private_path, public_path = write_keypair(key, args.out, force=args.force)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from None
    print(f"key id      {key.key_id}")
    print(f"private key {private_path}  (mode 0600: give it to the emitter only, OTEL_AUDIT_SIGNING_KEY)")
    print(f"public key  {public_path}  (give it to verifiers: otel-audit verify --trusted-key {public_path})")
    return EXIT_OK


def run_prove(args: argparse.Namespace) -> int:
    from otel_audit.core.keys import load_trusted_keys
    from otel_audit.verify.prove import prove_record

    keys = load_trusted_keys(args.trusted_key) if args.trusted_key else None
    with connect(args) as conn:
        try:
            proof, result = prove_record(conn, args.record_id, trusted_keys=keys)
        except NotAnchoredError as exc:
            print(f"otel-audit prove: {escape_text(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except ProofUnavailable as exc:
            print(f"otel-audit prove: {escape_text(str(exc))}", file=sys.stderr)
            return EXIT_INTEGRITY if exc.result is not None else EXIT_ERROR
    data = orjson.dumps(proof, option=orjson.OPT_INDENT_2) + b"\n"
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    cp = result.checkpoint
    assert cp is not None
    signed = "signature checked" if keys is not None else "signature not checked (no --trusted-key)"
    write_line(
        f"proof of record {args.record_id} (chain {cp.chain_id}, seq {proof['seq']}) up to checkpoint {cp.n} "
        f"(seq {cp.seq}, key {cp.key_id}, {signed}): {len(proof['records'])} record(s), {len(data):,} bytes"
        + (f", written to {args.out}" if args.out else ""),
        sys.stderr,
    )
    return EXIT_OK


def run_verify_proof(args: argparse.Namespace) -> int:
    from otel_audit.core.keys import load_trusted_keys
    from otel_audit.core.proof import verify_proof

    try:
        keys = load_trusted_keys(args.trusted_key)
    except AuditConfigurationError as exc:
        raise UsageError(str(exc)) from None
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        proof = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        proof = None
        parse_problem: str | None = f"the file is not JSON: {exc}"
    else:
        parse_problem = None
    result = verify_proof(proof, keys)
    if parse_problem:
        result.problems[:] = [parse_problem]
    if args.json:
        print_json(result.to_dict())
    elif result.valid:
        record, cp = result.record or {}, result.checkpoint
        assert cp is not None
        # The record's fields are whatever was sealed (an attacker's text too): escaped, never raw.
        write_line(
            f"VALID: record {record.get('id')} (chain {cp.chain_id}, seq {record.get('seq')}) is part of the chain "
            f"signed by trusted key {cp.key_id} in checkpoint {cp.n} (seq {cp.seq}, {cp.time})"
        )
        write_line(
            f"  {record.get('timestamp')}  actor {record.get('actor_id')}  action {record.get('action')}  "
            f"resource {record.get('resource_type')}/{record.get('resource_id')}  result {record.get('result')}"
        )
    else:
        print("INVALID proof:")
        for problem in result.problems:
            write_line(f"  - {problem}")
    return EXIT_OK if result.valid else EXIT_INTEGRITY
