"""Bearer tokens for the OTLP ingest, each with an identity and the services it may deliver for.

Token file (``--token-file``), one token per line; blank lines and text from a
``#`` that starts a word are ignored::

    # TOKEN                                      settings (optional, any order)
    kP3v...32 random characters...               name=collector-eu services=payroll,billing-*
    Qw9x...another token...                      name=collector-us
    Zt4m...a bare token, as before...

* ``name=NAME``: the token's identity, shown in logs, ``/stats``, the
  registry (``audit_chains.delivered_by``) and the records the ingest seals
  about what it received. Letters, digits and ``. _ - @ :``, up to 64
  characters. Without it the identity is ``token-`` and the first 8 hex digits
  of the token's SHA-256 (``printf %s TOKEN | sha256sum`` finds it). Several
  tokens may share a name (a rotation: the old and the new token of one
  collector) if they are bound to the same services.
* ``services=PATTERN[,PATTERN...]``: the ``service.name`` values the token may
  deliver records for, each exact or a glob (``*``, ``?``, ``[...]``, case
  sensitive). Without it the token may deliver for any service.

``OTEL_AUDIT_INGEST_TOKENS`` holds the same entries separated by ``;`` (or
newlines); an entry without settings may still list several bare tokens
separated by commas, as before (``tok1,tok2``).

Comparison is in constant time: the presented token and every configured one
are reduced to SHA-256 digests (equal length, so :func:`hmac.compare_digest`
reveals nothing about lengths either) and *all* of them are compared, so the
time taken does not tell which token matched or how many there are before it.
Tokens themselves never appear in an error message, a log line or ``/stats``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from otel_audit.errors import AuditConfigurationError
from otel_audit.settings import INGEST_TOKENS

__all__ = ["ANONYMOUS", "TOKENS_ENV", "Token", "TokenIdentity", "TokenSet", "parse_entry"]

_log = logging.getLogger("otel_audit.ingest")

TOKENS_ENV = INGEST_TOKENS.name

#: RFC 6750 ``b64token``: what may follow ``Bearer`` in an Authorization header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
_SETTING = re.compile(r"([a-z_]+)=(.*)", re.DOTALL)
_SETTINGS = ("name", "services")
_GENERATE = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
#: The identity of requests when authentication is off (``serve --insecure-no-auth``); no token may take it.
ANONYMOUS_NAME = "unauthenticated"


@dataclass(frozen=True)
class TokenIdentity:
    """Who a request came from: the token's name and the services it may deliver for."""

    name: str
    services: tuple[str, ...] | None = None  # glob patterns; None: any service

    @property
    def bound(self) -> bool:
        return self.services is not None

    def may_deliver(self, service_name: object) -> bool:
        """Whether this token may deliver records whose ``service.name`` is ``service_name``.

        A record without a service name (or with one that is not text) matches only
        the pattern ``*``.
        """
        patterns = self.services
        if patterns is None:
            return True
        if type(service_name) is not str:
            return "*" in patterns
        return any(fnmatch.fnmatchcase(service_name, pattern) for pattern in patterns)

    def describe(self) -> str:
        """``'collector-eu' (services payroll, billing-*)`` for messages."""
        if self.services is None:
            return repr(self.name)
        return f"{self.name!r} (services {', '.join(self.services)})"


#: Identity of every request when authentication is off.
ANONYMOUS = TokenIdentity(ANONYMOUS_NAME)


@dataclass(frozen=True)
class Token:
    """One configured token: the secret, its identity, and where it was configured (for errors)."""

    secret: str
    identity: TokenIdentity
    where: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"Token(identity={self.identity!r}, where={self.where!r})"


def default_name(secret: str) -> str:
    return "token-" + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:8]


def parse_entry(text: str, where: str) -> list[Token]:
    """Tokens of one entry: ``TOKEN [name=NAME] [services=P1,P2]`` or, without settings, ``TOK1,TOK2``.

    Comments (from a word starting with ``#``) must already be removed. Raises
    :class:`AuditConfigurationError` naming ``where`` (never the token).
    """
    words = text.split()
    if not words:
        return []
    settings = words[1:]
    if not settings or not all(_SETTING.fullmatch(word) for word in settings):
        # No settings: one token, or several separated by commas (the original format).
        secrets = [t for t in re.split(r"[,\s]+", text.strip()) if t]
        for secret in secrets:
            if "=" in secret.rstrip("="):
                raise AuditConfigurationError(
                    f"{where}: {secret.split('=', 1)[0]!r}= looks like a setting, but settings (name=, services=) "
                    "follow a token on its own line or entry; separate entries in "
                    f"{TOKENS_ENV} with ';'"
                )
        return [_token(secret, None, None, where) for secret in secrets]
    secret = words[0]
    if "," in secret:
        raise AuditConfigurationError(
            f"{where}: settings (name=, services=) follow one token, not a comma-separated list; separate entries "
            f"in {TOKENS_ENV} with ';'"
        )
    seen: dict[str, str] = {}
    for word in settings:
        match = _SETTING.fullmatch(word)
        assert match is not None
        key, value = match.group(1), match.group(2)
        if key not in _SETTINGS:
            raise AuditConfigurationError(
                f"{where}: unknown setting {key}= (known: {', '.join(s + '=' for s in _SETTINGS)})"
            )
        if key in seen:
            raise AuditConfigurationError(f"{where}: {key}= is given twice")
        seen[key] = value
    name = seen.get("name")
    if name is not None and not _NAME.fullmatch(name):
        raise AuditConfigurationError(
            f"{where}: name={name!r} is not a token name: use letters, digits and . _ - @ : (up to 64 characters, "
            "starting with a letter or digit)"
        )
    if name == ANONYMOUS_NAME:
        raise AuditConfigurationError(
            f"{where}: the name {ANONYMOUS_NAME!r} is reserved for requests served without authentication; "
            "choose another"
        )
    services: tuple[str, ...] | None = None
    if "services" in seen:
        patterns = seen["services"].split(",")
        if not seen["services"] or any(not p for p in patterns):
            raise AuditConfigurationError(
                f"{where}: services= needs a comma-separated list of service names or globs (e.g. "
                "services=payroll,billing-*) without empty items; leave services= out to allow every service"
            )
        services = tuple(dict.fromkeys(patterns))
    return [_token(secret, name, services, where)]


def _token(secret: str, name: str | None, services: tuple[str, ...] | None, where: str) -> Token:
    if not _B64TOKEN.fullmatch(secret):
        raise AuditConfigurationError(
            f"{where}: the token contains characters a bearer token cannot carry (allowed: letters, digits and "
            f"- . _ ~ + / with trailing =); generate one with {_GENERATE}"
        )
    if len(secret) < MIN_TOKEN_CHARS:
        raise AuditConfigurationError(
            f"{where}: the token has {len(secret)} characters; use at least {MIN_TOKEN_CHARS} random characters "
            f"({_GENERATE})"
        )
    return Token(secret, TokenIdentity(name or default_name(secret), services), where)


def _strip_comment(line: str) -> str:
    """Text before a word that starts with ``#`` (``#`` is not a token or name character)."""
    match = re.search(r"(^|\s)#", line)
    return line[: match.start()] if match else line


class TokenSet:
    """The accepted bearer tokens (kept only as SHA-256 digests), each with its identity."""

    def __init__(self, tokens: Iterable[str | Token]) -> None:
        entries: list[tuple[bytes, TokenIdentity]] = []
        by_digest: dict[bytes, Token] = {}
        by_name: dict[str, Token] = {}
        for number, item in enumerate(tokens, 1):
            token = item if isinstance(item, Token) else _token(item, None, None, f"ingest token #{number}")
            digest = hashlib.sha256(token.secret.encode("ascii")).digest()
            earlier = by_digest.get(digest)
            if earlier is not None:
                if earlier.identity != token.identity:
                    raise AuditConfigurationError(
                        f"{token.where}: the same token is configured at {earlier.where} with another name or "
                        "services; keep one entry"
                    )
                continue  # listed twice alike (file and environment during a rotation): once is enough
            same_name = by_name.get(token.identity.name)
            if same_name is not None and same_name.identity.services != token.identity.services:
                raise AuditConfigurationError(
                    f"{token.where}: the name {token.identity.name!r} is used at {same_name.where} with other "
                    "services; tokens may share a name (a rotation) only with the same services="
                )
            by_digest[digest] = token
            by_name.setdefault(token.identity.name, token)
            entries.append((digest, token.identity))
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def identities(self) -> list[TokenIdentity]:
        """The distinct identities, in configuration order."""
        return list(dict.fromkeys(identity for _, identity in self._entries))

    @classmethod
    def load(cls, token_file: Path | str | None = None, env_value: str | None = None) -> TokenSet:
        """Tokens from ``token_file`` plus those in ``env_value`` (the environment variable's text)."""
        tokens: list[Token] = []
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
            for number, line in enumerate(text.splitlines(), 1):
                tokens.extend(parse_entry(_strip_comment(line), f"token file {path} line {number}"))
        if env_value:
            entries = re.split(r"[;\n]", env_value)
            for number, entry in enumerate(entries, 1):
                where = f"{TOKENS_ENV} entry {number}" if len(entries) > 1 else TOKENS_ENV
                tokens.extend(parse_entry(_strip_comment(entry), where))
        return cls(tokens)

    @classmethod
    def from_environment(cls, token_file: Path | str | None = None) -> TokenSet:
        return cls.load(token_file, INGEST_TOKENS.get())

    def identify(self, authorization: str | None) -> TokenIdentity | None:
        """The identity of the bearer token in an ``Authorization`` header value; None if none matches."""
        if not authorization or not self._entries:
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        presented = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
        found = None
        for digest, identity in self._entries:  # every one, no early exit
            if hmac.compare_digest(digest, presented):
                found = identity
        return found

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted bearer token."""
        return self.identify(authorization) is not None
