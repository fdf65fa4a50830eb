"""Every ``OTEL_AUDIT_*`` environment variable, in one table: name, default, parser, help.

:func:`otel_audit.configure`, the ``otel-audit`` command and the
``opentelemetry-instrument`` entry point all read their variables through
this module, so a variable has one default and one way of being parsed
wherever it is read, and the configuration reference in the documentation
(``docs/configuration.md``) is generated from :data:`SETTINGS`: run
``python -m otel_audit.settings --write docs/configuration.md`` after changing
the table (a test fails while the page and the table differ).

This module imports nothing heavy (only :mod:`otel_audit.errors`): the
zero-code entry point runs it in every instrumented process, enabled or not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from otel_audit.errors import AuditConfigurationError

__all__ = [
    "BLOCK_TIMEOUT",
    "CHECKPOINT_INTERVAL",
    "CHECKPOINT_RECORDS",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_RETAIN_DAYS",
    "DISABLED",
    "DSN",
    "ENCRYPT",
    "EVENT_PREFIX",
    "INGEST_TOKENS",
    "KEYSTORE_DSN",
    "LOGGERS",
    "MASTER_KEY",
    "MASTER_KEY_FILE",
    "MAX_RECORD_BYTES",
    "PSEUDONYMIZE",
    "PSEUDONYM_KEYS",
    "PSEUDONYM_KEYS_FILE",
    "REDACT",
    "REDACT_NAMES",
    "REDACT_VALUES",
    "SETTINGS",
    "SIGNING_KEY",
    "SPOOL_DIR",
    "SPOOL_FSYNC",
    "SPOOL_MAX_BYTES",
    "SPOOL_SEGMENT_BYTES",
    "STRICT",
    "SUBJECT_FIELDS",
    "WHEN_FULL",
    "WITNESS",
    "WITNESS_ALLOW_UNLOCKED",
    "WITNESS_DIR",
    "WITNESS_RETAIN_DAYS",
    "Setting",
    "parse_bool",
    "reference_markdown",
]

T = TypeVar("T")

# Defaults that code elsewhere needs as plain numbers (dataclass defaults, CLI help); each is
# written once, here.
DEFAULT_SPOOL_MAX_BYTES = 1024**3
DEFAULT_SPOOL_SEGMENT_BYTES = 16 * 1024**2
DEFAULT_BLOCK_TIMEOUT = 5.0
DEFAULT_MAX_RECORD_BYTES = 256 * 1024
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_CHECKPOINT_INTERVAL = 10.0
#: Six years (HIPAA's documentation retention, 45 CFR 164.316(b)(2)(i)), counting leap days.
DEFAULT_RETAIN_DAYS = 6 * 366

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# ---------------------------------------------------------------------- parsers
# Each takes the variable's text (never empty: an empty variable counts as unset) and raises
# ValueError with what was expected; Setting.get() names the variable in the error.
def parse_bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, any case: the one boolean rule."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected 1, true, yes or on (or 0, false, no, off)")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _parse_positive_int(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _parse_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds, such as 5 or 0.5") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("expected a positive, finite number of seconds")
    return value


def _parse_wait(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds, such as 5 or 0.5") from None
    if not 0 <= value < float("inf"):
        raise ValueError("expected a finite number of seconds, 0 or more")
    return value


def _parse_optional_text(text: str) -> str | None:
    return text.strip() or None


def _parse_path(text: str) -> Path:
    return Path(os.path.expanduser(text.strip()))


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_optional_list(text: str) -> tuple[str, ...] | None:
    return _parse_list(text)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected " + " or ".join(choices))
        return value

    return parse


def _default_spool_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "otel-audit" / "spool"


# ---------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Setting(Generic[T]):
    """One ``OTEL_AUDIT_*`` variable.

    ``default`` (or ``default_factory``, for a default that depends on the
    environment) is what :meth:`get` returns when the variable is unset or
    empty; ``default_text`` is how the reference writes it. ``argument`` names
    the :func:`~otel_audit.configure` argument that overrides the variable and
    ``read_by`` says which parts of otel-audit read it.
    """

    name: str
    parse: Callable[[str], T]
    default: T
    help: str
    default_text: str = "none"
    argument: str | None = None
    read_by: str = "configure(), serve"
    default_factory: Callable[[], T] | None = field(default=None, compare=False)
    #: Key material: an error never repeats the value.
    secret: bool = False

    def raw(self, env: Mapping[str, str] | None = None) -> str | None:
        """The variable's text, ``None`` when unset or blank."""
        text = (os.environ if env is None else env).get(self.name)
        return text if text is not None and text.strip() else None

    def get(self, env: Mapping[str, str] | None = None) -> T:
        """The parsed value from ``env`` (default ``os.environ``), else the default.

        Raises :class:`~otel_audit.errors.AuditConfigurationError` naming the
        variable, its value and what was expected.
        """
        text = self.raw(env)
        if text is None:
            return self.default_factory() if self.default_factory is not None else self.default
        try:
            return self.parse(text)
        except ValueError as exc:
            shown = "(hidden)" if self.secret else repr(text)
            raise AuditConfigurationError(
                f"{self.name}={shown} is not valid: {exc}. Fix or unset it ({self.help}; default: {self.default_text})"
            ) from None

    def value(self, given: T | None, env: Mapping[str, str] | None = None) -> T:
        """``given`` (an argument or a command-line option) when not ``None``, else :meth:`get`."""
        return given if given is not None else self.get(env)

    def cli_help(self) -> str:
        """``$NAME or DEFAULT``: how command-line help says where an option's default comes from."""
        if self.default_text in ("none", "required"):
            return f"${self.name}"
        return f"${self.name} or {self.default_text}"


DSN: Setting[str | None] = Setting(
    "OTEL_AUDIT_DSN",
    _parse_optional_text,
    None,
    "PostgreSQL connection string of the audit database; without it the zero-code entry point does nothing",
    default_text="required",
    argument="dsn",
    read_by="configure(), zero-code, every command (--dsn)",
)
DISABLED: Setting[bool] = Setting(
    "OTEL_AUDIT_DISABLED",
    parse_bool,
    False,
    "turns the zero-code entry point off even when OTEL_AUDIT_DSN is set",
    default_text="false",
    read_by="zero-code",
)
SPOOL_DIR: Setting[Path] = Setting(
    "OTEL_AUDIT_SPOOL_DIR",
    _parse_path,
    Path(),
    "durable local spool of records not yet committed; use a local disk",
    default_text="`$XDG_STATE_HOME/otel-audit/spool` (`~/.local/state/...`)",
    argument="spool_dir",
    read_by="configure(), serve, status",
    default_factory=_default_spool_dir,
)
SPOOL_MAX_BYTES: Setting[int] = Setting(
    "OTEL_AUDIT_SPOOL_MAX_BYTES",
    _parse_positive_int,
    DEFAULT_SPOOL_MAX_BYTES,
    "bytes of records not yet committed that one process may spool",
    default_text="1073741824 (1 GiB)",
    argument="spool_max_bytes",
    read_by="configure()",
)
SPOOL_SEGMENT_BYTES: Setting[int] = Setting(
    "OTEL_AUDIT_SPOOL_SEGMENT_BYTES",
    _parse_positive_int,
    DEFAULT_SPOOL_SEGMENT_BYTES,
    "size of one spool file (at least 1 MiB and twice the largest record)",
    default_text="16777216 (16 MiB)",
    argument="spool_segment_bytes",
    read_by="configure()",
)
SPOOL_FSYNC: Setting[str] = Setting(
    "OTEL_AUDIT_SPOOL_FSYNC",
    _choice("interval", "always", "never"),
    "interval",
    "`interval`, `always` or `never`: when the spool is synced to disk (see [Durability](durability.md))",
    default_text="`interval`",
    argument="spool_fsync",
    read_by="configure()",
)
WHEN_FULL: Setting[str] = Setting(
    "OTEL_AUDIT_WHEN_FULL",
    _choice("block", "drop"),
    "block",
    "`block` (wait, then raise `SpoolFull`) or `drop` (count, log, mark) when the spool is full",
    default_text="`block`",
    argument="when_full",
    read_by="configure()",
)
BLOCK_TIMEOUT: Setting[float] = Setting(
    "OTEL_AUDIT_BLOCK_TIMEOUT",
    _parse_wait,
    DEFAULT_BLOCK_TIMEOUT,
    "seconds `block` waits for spool space",
    default_text="5",
    argument="block_timeout",
    read_by="configure()",
)
STRICT: Setting[bool] = Setting(
    "OTEL_AUDIT_STRICT",
    parse_bool,
    False,
    "raise `AuditRecordInvalid` at the logging call instead of storing invalid records flagged",
    default_text="false",
    argument="strict",
    read_by="configure()",
)
LOGGERS: Setting[tuple[str, ...]] = Setting(
    "OTEL_AUDIT_LOGGERS",
    _parse_list,
    (),
    "comma-separated loggers (and their children) whose records are audit records even without `audit.action`",
    argument="audit_loggers",
    read_by="configure(), serve (--audit-logger)",
)
EVENT_PREFIX: Setting[str | None] = Setting(
    "OTEL_AUDIT_EVENT_PREFIX",
    _parse_optional_text,
    None,
    "records whose OTel event name starts with it are audit records; the action defaults to the name "
    "without the prefix",
    argument="event_prefix",
    read_by="configure(), serve (--event-prefix)",
)
MAX_RECORD_BYTES: Setting[int] = Setting(
    "OTEL_AUDIT_MAX_RECORD_BYTES",
    _parse_positive_int,
    DEFAULT_MAX_RECORD_BYTES,
    "larger records are shortened, never dropped (see [Attributes](attributes.md#recognition-validation-enrichment))",
    default_text="262144 (256 KiB)",
    argument="max_record_bytes",
    read_by="configure(), serve (--max-record-bytes)",
)
SIGNING_KEY: Setting[Path | None] = Setting(
    "OTEL_AUDIT_SIGNING_KEY",
    _parse_path,
    None,
    "Ed25519 private key written by `otel-audit keygen`: turns on signed checkpoints",
    default_text="none (checkpoints off)",
    argument="signing_key",
    read_by="configure(), serve, archive, retention (--signing-key)",
)
WITNESS_DIR: Setting[Path | None] = Setting(
    "OTEL_AUDIT_WITNESS_DIR",
    _parse_path,
    None,
    "directory outside PostgreSQL that receives a copy of every committed checkpoint",
    argument="witness_dir",
    read_by="configure(), serve (--witness-dir)",
)
WITNESS: Setting[str | None] = Setting(
    "OTEL_AUDIT_WITNESS",
    _parse_optional_text,
    None,
    "one more witness: `s3://bucket/prefix` (S3 with Object Lock, [details](anchoring.md#deploying-the-witness)) "
    "or a directory",
    argument="witnesses=[S3Witness(...)]",
)
WITNESS_RETAIN_DAYS: Setting[int] = Setting(
    "OTEL_AUDIT_WITNESS_RETAIN_DAYS",
    _parse_positive_int,
    DEFAULT_RETAIN_DAYS,
    "Object Lock retention, in days, of each checkpoint an `s3://` witness stores",
    default_text=f"{DEFAULT_RETAIN_DAYS} (six years)",
    argument="S3Witness(retain_days=)",
)
WITNESS_ALLOW_UNLOCKED: Setting[bool] = Setting(
    "OTEL_AUDIT_WITNESS_ALLOW_UNLOCKED",
    parse_bool,
    False,
    "let an `s3://` witness use a bucket without versioning and Object Lock (whose checkpoints can then be deleted)",
    default_text="false",
    argument="S3Witness(allow_unlocked=)",
)
CHECKPOINT_RECORDS: Setting[int] = Setting(
    "OTEL_AUDIT_CHECKPOINT_RECORDS",
    _parse_positive_int,
    DEFAULT_CHECKPOINT_RECORDS,
    "sign a checkpoint every this many records",
    default_text=str(DEFAULT_CHECKPOINT_RECORDS),
    argument="checkpoint_records",
    read_by="configure(), serve (--checkpoint-records)",
)
CHECKPOINT_INTERVAL: Setting[float] = Setting(
    "OTEL_AUDIT_CHECKPOINT_INTERVAL",
    _parse_seconds,
    DEFAULT_CHECKPOINT_INTERVAL,
    "and every this many seconds, idle chains too",
    default_text="10",
    argument="checkpoint_interval",
    read_by="configure(), serve (--checkpoint-interval)",
)
INGEST_TOKENS: Setting[str | None] = Setting(
    "OTEL_AUDIT_INGEST_TOKENS",
    _parse_optional_text,
    None,
    "bearer tokens `otel-audit serve` accepts, entries separated by `;` or newlines "
    "(see [the ingest](ingest.md#tokens-identities-and-what-they-may-deliver))",
    read_by="serve (with --token-file)",
)

REDACT: Setting[bool] = Setting(
    "OTEL_AUDIT_REDACT",
    parse_bool,
    True,
    "replace secrets (passwords, tokens, keys, card numbers) before sealing (see [Privacy](privacy.md))",
    default_text="true",
    argument="redact",
)
REDACT_NAMES: Setting[tuple[str, ...]] = Setting(
    "OTEL_AUDIT_REDACT_NAMES",
    _parse_list,
    (),
    "comma-separated attribute-name words redacted in addition to the built-in ones",
    argument="redact_names",
)
REDACT_VALUES: Setting[tuple[str, ...] | None] = Setting(
    "OTEL_AUDIT_REDACT_VALUES",
    _parse_optional_list,
    None,
    "comma-separated value rules applied to every value",
    default_text="`bearer,jwt,private_key,pan` (all)",
    argument="redact_values",
)
PSEUDONYM_KEYS_FILE: Setting[Path | None] = Setting(
    "OTEL_AUDIT_PSEUDONYM_KEYS_FILE",
    _parse_path,
    None,
    "pseudonym key ring file: the `pseudonymize` fields are stored as keyed HMAC-SHA-256 pseudonyms "
    "(see [Privacy](privacy.md#pseudonymization))",
    default_text="none (no pseudonyms)",
    argument="pseudonym_keys",
    read_by="configure(), serve, query",
)
PSEUDONYM_KEYS: Setting[str | None] = Setting(
    "OTEL_AUDIT_PSEUDONYM_KEYS",
    _parse_optional_text,
    None,
    "the pseudonym key ring's text itself, when there is no `OTEL_AUDIT_PSEUDONYM_KEYS_FILE`",
    argument="pseudonym_keys",
    read_by="configure(), serve, query",
    secret=True,
)
PSEUDONYMIZE: Setting[tuple[str, ...] | None] = Setting(
    "OTEL_AUDIT_PSEUDONYMIZE",
    _parse_optional_list,
    None,
    "comma-separated fields stored as pseudonyms when a pseudonym key ring is set",
    default_text="`audit.actor.id,user.id,client.address,session.id`",
    argument="pseudonymize",
)
KEYSTORE_DSN: Setting[str | None] = Setting(
    "OTEL_AUDIT_KEYSTORE_DSN",
    _parse_optional_text,
    None,
    "PostgreSQL connection string of the subject key store: the `encrypt` fields are encrypted per subject, "
    "erasable by `otel-audit erase` (see [Privacy](privacy.md#erasure-by-crypto-shredding))",
    default_text="none (no encryption)",
    argument="keystore_dsn",
    read_by="configure(), serve, query, privacy, erase (--keystore-dsn)",
)
MASTER_KEY_FILE: Setting[Path | None] = Setting(
    "OTEL_AUDIT_MASTER_KEY_FILE",
    _parse_path,
    None,
    "the key store's master key ring file",
    default_text="none (required with a key store)",
    argument="master_key",
    read_by="configure(), serve, query, erase (--master-key)",
)
MASTER_KEY: Setting[str | None] = Setting(
    "OTEL_AUDIT_MASTER_KEY",
    _parse_optional_text,
    None,
    "the master key ring's text itself, when there is no `OTEL_AUDIT_MASTER_KEY_FILE`",
    argument="master_key",
    read_by="configure(), serve, query, erase",
    secret=True,
)
ENCRYPT: Setting[tuple[str, ...] | None] = Setting(
    "OTEL_AUDIT_ENCRYPT",
    _parse_optional_list,
    None,
    "comma-separated fields encrypted under their subject's key when a key store is set",
    default_text="`audit.old_values,user_agent.original`",
    argument="encrypt",
)
SUBJECT_FIELDS: Setting[tuple[str, ...] | None] = Setting(
    "OTEL_AUDIT_SUBJECT_FIELDS",
    _parse_optional_list,
    None,
    "comma-separated fields that name a record's data subject, the first present wins",
    default_text="`audit.subject.id,audit.actor.id,user.id`",
    argument="subject_fields",
)

#: Every variable, in the order the reference lists them.
SETTINGS: tuple[Setting[object], ...] = (
    DSN,
    SPOOL_DIR,
    SPOOL_MAX_BYTES,
    SPOOL_SEGMENT_BYTES,
    SPOOL_FSYNC,
    WHEN_FULL,
    BLOCK_TIMEOUT,  # type: ignore[assignment]
    STRICT,
    LOGGERS,
    EVENT_PREFIX,
    MAX_RECORD_BYTES,
    SIGNING_KEY,
    WITNESS_DIR,
    WITNESS,
    WITNESS_RETAIN_DAYS,
    WITNESS_ALLOW_UNLOCKED,
    CHECKPOINT_RECORDS,
    CHECKPOINT_INTERVAL,
    REDACT,
    REDACT_NAMES,
    REDACT_VALUES,
    PSEUDONYM_KEYS_FILE,
    PSEUDONYM_KEYS,
    PSEUDONYMIZE,
    KEYSTORE_DSN,
    MASTER_KEY_FILE,
    MASTER_KEY,
    ENCRYPT,
    SUBJECT_FIELDS,
    INGEST_TOKENS,
    DISABLED,
)


# ---------------------------------------------------------------------- the reference page
BEGIN_MARK = "<!-- settings:begin (generated by `python -m otel_audit.settings --write docs/configuration.md`) -->"
END_MARK = "<!-- settings:end -->"


def reference_markdown() -> str:
    """The variables table of ``docs/configuration.md`` (between its markers)."""
    lines = [
        "| environment variable | `configure()` argument | default | read by | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        argument = f"`{s.argument}`" if s.argument else ""
        lines.append(f"| `{s.name}` | {argument} | {s.default_text} | {s.read_by} | {s.help} |")
    return "\n".join(lines) + "\n"


def rewrite_page(text: str) -> str:
    """``text`` with the block between the markers replaced by :func:`reference_markdown`."""
    start = text.find(BEGIN_MARK)
    end = text.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"the page has no settings block: add the lines\n{BEGIN_MARK}\n{END_MARK}")
    return text[: start + len(BEGIN_MARK)] + "\n" + reference_markdown() + text[end:]


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in ("--write", "--check"):
        page = Path(argv[1])
        current = page.read_text(encoding="utf-8")
        wanted = rewrite_page(current)
        if argv[0] == "--check":
            if current != wanted:
                print(f"{page} is out of date: run python -m otel_audit.settings --write {page}", file=sys.stderr)
                return 1
            return 0
        if current != wanted:
            page.write_text(wanted, encoding="utf-8")
        return 0
    if not argv:
        sys.stdout.write(reference_markdown())
        return 0
    print("usage: python -m otel_audit.settings [--write PAGE | --check PAGE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
