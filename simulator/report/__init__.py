"""``sim report``: traces in, a Markdown report with PNG figures out (the seeds' experiments).

    from simulator.report import build_report
    build_report(["traces/synthetic.parquet"], [latency], "reports/synthetic")

One module per experiment family (seed004, seed000 + hypotheses, seed001 + seed001_more,
seed002, seed003, accuracy), shared machinery in common / stats / figures / rules, and the
builder that runs them in order and writes index.md.
"""

from .builder import ReportError, build_report, report_command

__all__ = ["ReportError", "build_report", "report_command"]
