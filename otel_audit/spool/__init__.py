"""Durable local spool between the sealing core and the sink (no OTel, no PostgreSQL)."""

from otel_audit.spool.spool import ChainSpool, SpoolConfig, list_chain_dirs

__all__ = ["ChainSpool", "SpoolConfig", "list_chain_dirs"]
