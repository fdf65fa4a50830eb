"""The verifier: recompute every hash and link, check every column, report precisely."""

from otel_audit.verify.chain_walk import ChainWalker
from otel_audit.verify.database import VerifyOptions, verify_database
from otel_audit.verify.report import ChainSummary, Finding, Kind, Severity, VerificationReport

__all__ = [
    "ChainSummary",
    "ChainWalker",
    "Finding",
    "Kind",
    "Severity",
    "VerificationReport",
    "VerifyOptions",
    "verify_database",
]
