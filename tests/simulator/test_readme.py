"""The README's schema table is the schema itself."""

from pathlib import Path

from simulator.trace import schema_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_schema_in_sync():
    text = README.read_text()
    begin, end = text.index("<!-- schema:begin -->"), text.index("<!-- schema:end -->")
    assert text[begin:end].split("\n", 1)[1].strip() == schema_markdown().strip(), \
        "README schema table is stale: paste the output of `sim schema`"
