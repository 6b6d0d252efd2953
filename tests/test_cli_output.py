"""What the commands print (issue 30): `list` aligns each section's text in one column however long a
name is; `audit` prints its protocol once above a Markdown table that a '|' in a run name cannot break."""

from __future__ import annotations

import re

import pandas as pd


def test_list_aligns_every_section(capsys) -> None:
    from bench.cli import cmd_list

    cmd_list()
    sections = capsys.readouterr().out.split("\n\n")
    assert len(sections) == 5  # registries; sampler options; guidance options; timestep densities; metric outputs
    for section in sections:
        rows = [line for line in section.splitlines() if line and not line.endswith(":")]
        starts = {re.match(r"\s*\S+(?: \S+)*?\s{2,}", row).end() for row in rows}  # where the text column begins
        assert len(starts) == 1, section


def _cells(line: str) -> list[str]:
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]  # a Markdown row: '|' not escaped separates cells


def test_audit_prints_the_protocol_once_and_escapes_pipes() -> None:
    from bench.rescore import audit_text

    protocol = "domain:digits; resize none; 80 vs 360 digits:test"
    table = pd.DataFrame([
        {"run": "ddim eta=0 10 steps", "logged": 5.0, "torch-fidelity": 5.0, "torch-fidelity protocol": protocol,
         "clean-fid": 5.1, "clean-fid protocol": "clean; mode clean", "torch-fidelity - logged": 0.0,
         "clean-fid - torch-fidelity": 0.1},
        {"run": "a|b weird | name", "logged": 6.0, "torch-fidelity": 6.0, "torch-fidelity protocol": protocol,
         "clean-fid": 6.2, "clean-fid protocol": "clean; mode clean", "torch-fidelity - logged": 0.0,
         "clean-fid - torch-fidelity": 0.2},
    ])
    text = audit_text(table)
    assert text.count(protocol) == 1 and text.startswith(f"torch-fidelity protocol: {protocol}")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 4 and len({len(_cells(r)) for r in rows}) == 1  # header, rule, 2 rows: 6 cells each
    assert "a\\|b weird \\| name" in rows[3]
    assert max(len(r) for r in rows) < 120  # compact: no protocol column repeated per row
