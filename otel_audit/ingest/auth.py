"""Bearer-token authentication for the OTLP ingest.

Tokens come from a file (one per line; blank lines and ``#`` comments are
ignored) and/or ``OTEL_AUDIT_INGEST_TOKENS`` (comma-separated). Several tokens
can be valid at once, which is how a token is rotated without dropping data:
add the new one, move the senders over, remove the old one.

Comparison is in constant time: the presented token and every configured one
are reduced to SHA-256 digests (equal length, so :func:`hmac.compare_digest`
reveals nothing about lengths either) and *all* of them are compared, so the
time taken does not tell which token matched or how many there are before it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from otel_audit.errors import AuditConfigurationError

__all__ = ["TOKENS_ENV", "TokenSet"]

_log = logging.getLogger("otel_audit.ingest")

TOKENS_ENV = "OTEL_AUDIT_INGEST_TOKENS"

#: RFC 6750 ``b64token``: what may follow ``Bearer`` in an Authorization header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_CHARS = 16


class TokenSet:
    """The accepted bearer tokens (kept only as SHA-256 digests)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        digests = []
        for number, token in enumerate(tokens, 1):
            if not _B64TOKEN.fullmatch(token):
                raise AuditConfigurationError(
                    f"ingest token #{number} contains characters a bearer token cannot carry (allowed: letters, "
                    "digits and - . _ ~ + / with trailing =); generate one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise AuditConfigurationError(
                    f"ingest token #{number} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} random "
                    "characters (`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            digests.append(hashlib.sha256(token.encode("ascii")).digest())
        self._digests = tuple(digests)

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def load(cls, token_file: Path | str | None = None, env_value: str | None = None) -> TokenSet:
        """Tokens from ``token_file`` plus those in ``env_value`` (the environment variable's text)."""
        tokens: list[str] = []
        if token_file is not None:
            path = Path(token_file)
            try:
                text = path.read_text(encoding="utf-8")
                mode = path.stat().st_mode
            except (OSError, UnicodeDecodeError) as exc:
                raise AuditConfigurationError(f"cannot read the token file {path}: {exc}") from exc
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                _log.warning(
                    "otel-audit serve: the token file %s is accessible to other users (mode %o); "
                    "restrict it with `chmod 600 %s`",
                    path,
                    stat.S_IMODE(mode),
                    path,
                )
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    tokens.append(line)
        if env_value:
            tokens.extend(t.strip() for t in env_value.split(",") if t.strip())
        return cls(tokens)

    @classmethod
    def from_environment(cls, token_file: Path | str | None = None) -> TokenSet:
        return cls.load(token_file, os.environ.get(TOKENS_ENV))

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted bearer token."""
        if not authorization or not self._digests:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
        matched = False
        for digest in self._digests:  # every one, no early exit
            matched |= hmac.compare_digest(digest, presented)
        return matched
