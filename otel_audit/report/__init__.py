"""Evidence for auditors: the report (``otel-audit report``) and the evidence pack (``otel-audit evidence``).

* :func:`build_report` gathers the verdict, coverage, activity, failed attempts,
  problem records and timelines of a period, aggregated by PostgreSQL, in one
  snapshot; it only reads.
* :func:`render_html` draws it as one self-contained page (inline CSS and SVG,
  no script, nothing loaded from the network).
* :func:`write_evidence_pack` adds record proofs, the checkpoints and public
  keys they rest on, archive manifests and offline instructions, in one zip.
"""

from otel_audit.report.collect import REPORT_FORMAT, ReportOptions, build_report
from otel_audit.report.html import render_html

__all__ = ["REPORT_FORMAT", "ReportOptions", "build_report", "render_html"]
