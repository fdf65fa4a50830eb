"""``otel-audit privacy new-key``: key material for the privacy policy (docs/privacy.md).

Exit codes: 0 done, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from otel_audit.cli.common import EXIT_OK, UsageError
from otel_audit.errors import AuditConfigurationError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
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
