"""``python -m otel_audit`` is the ``otel-audit`` command."""

import sys

from otel_audit.cli.main import main

sys.exit(main())
