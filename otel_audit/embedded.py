"""An embedded PostgreSQL for the demo and the tests (the ``pgserver`` wheel, PostgreSQL 16).

Not for production: it exists so that a laptop with no database can run
``otel-audit demo`` and the test suite with nothing but ``pip install``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from otel_audit.errors import AuditConfigurationError

__all__ = ["EmbeddedPostgres", "default_data_dir"]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "otel-audit" / "demo-postgres"


class EmbeddedPostgres:
    """Start (or reuse) a pgserver instance in ``data_dir``.

    ``keep_running=True`` leaves the server up after this process exits, so the
    DSN printed by the demo keeps working for ``otel-audit verify`` and
    ``query``; :meth:`stop` stops it.
    """

    def __init__(self, data_dir: Path | str | None = None, *, keep_running: bool = False) -> None:
        try:
            with warnings.catch_warnings():
                # platformdirs warns that XDG_RUNTIME_DIR is unset (common in containers) and
                # falls back to /tmp/runtime-<uid>, which is fine for pgserver's lock file.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                import pgserver
        except ImportError as exc:
            raise AuditConfigurationError(
                "the embedded PostgreSQL needs the 'embedded' extra: pip install 'otel-audit[embedded]' "
                "(or pass --dsn / set OTEL_AUDIT_DSN to use your own server)"
            ) from exc
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            self._server: Any = pgserver.get_server(  # type: ignore[attr-defined]
                self.data_dir, cleanup_mode=None if keep_running else "stop"
            )

    def dsn(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def create_database(self, name: str) -> str:
        """Create ``name`` if missing; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def stop(self) -> None:
        """Stop the server now (fast shutdown); a no-op when it is not running."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, one per binary

        if not self.is_running():
            return
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user)
        # pgserver stops the server again at interpreter exit unless told it is gone.
        if hasattr(self._server, "_postmaster_info"):
            self._server._postmaster_info = None

    def start(self) -> None:
        """Restart after :meth:`stop` (the fault tests stop and start the server)."""
        self._server.ensure_postgres_running()

    @property
    def server(self) -> Any:
        return self._server
