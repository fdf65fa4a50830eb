"""Personal data and secrets in an immutable trail (issue 12).

Every protection runs *before* a record is sealed, so the seal covers exactly
what is stored and no later step ever has to edit a sealed record:

* :mod:`~otel_audit.privacy.redact`: secrets (passwords, tokens, keys, card
  numbers) are replaced, on by default.

See ``docs/privacy.md`` for what each protection guarantees and what it does not.
"""

from otel_audit.privacy.policy import PrivacyPolicy, privacy_policy
from otel_audit.privacy.redact import DEFAULT_NAMES, REDACTED, REDACTIONS, VALUE_RULES, Redactor

__all__ = [
    "DEFAULT_NAMES",
    "REDACTED",
    "REDACTIONS",
    "VALUE_RULES",
    "PrivacyPolicy",
    "Redactor",
    "privacy_policy",
]
