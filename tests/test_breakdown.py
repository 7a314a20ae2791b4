"""benchmarks/breakdown.py: CER by font and the share of each character class misread, from htr-eval --jsonl rows."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "breakdown.py"
spec = importlib.util.spec_from_file_location("breakdown", SCRIPT)
breakdown = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown)


def test_misread_marks_substituted_and_dropped_characters_only():
    assert breakdown.misread("Hello", "Hello") == [False] * 5
    assert breakdown.misread("Hello", "Hallo") == [False, True, False, False, False]
    dropped = breakdown.misread("Hello", "Helo")
    assert sum(dropped) == 1 and "Hello"[dropped.index(True)] == "l"  # either "l" may be the one dropped
    assert breakdown.misread("Hello", "Hello!!") == [False] * 5  # insertions belong to no reference character
    assert breakdown.misread("ab", "") == [True, True]
    assert breakdown.misread("", "abc") == []


def test_breakdown_groups_by_the_font_beside_each_line(tmp_path):
    (tmp_path / "sources.tsv").write_text("path\tfont_package\tfont_file\tfont_licence\n"
                                          "a.jpg\tp\tOne.ttf\tOFL\nb.jpg\tp\tTwo.ttf\tOFL\n")
    rows = [
        {"path": str(tmp_path / "a.jpg"), "reference": "Ab 1", "texts": ["Ab 1", "ab 1"], "cer": [0.0, 0.25]},
        {"path": str(tmp_path / "b.jpg"), "reference": "cd.", "texts": ["cd", "cd."], "cer": [1 / 3, 0.0]},
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = breakdown.breakdown(rows)
    assert "| all | 2 | 14.29% | 14.29% | +0.00" in table
    assert "| One.ttf | 1 | 0.00% | 25.00% | +25.00" in table
    assert "| Two.ttf | 1 | 33.33% | 0.00% | -33.33" in table
    assert "| all | capitals | 1 | 0.0% | 100.0% |" in table
    assert "| all | punctuation | 1 | 100.0% | 0.0% |" in table
    assert "| One.ttf | lower case | 1 | 0.0% | 0.0% |" in table
    assert "| Two.ttf | lower case | 2 | 0.0% | 0.0% |" in table
    assert "| Two.ttf | punctuation | 1 | 100.0% | 0.0% |" in table
    assert "| One.ttf | punctuation" not in table  # a class a font's lines do not hold gets no row
    assert breakdown.main([str(jsonl)]) == 0


def test_breakdown_refuses_rows_that_are_not_htr_eval_rows(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"path": "a.jpg"}) + "\n")
    assert breakdown.main([str(bad)]) == 2
    assert "row 1 is not an htr-eval --jsonl row" in capsys.readouterr().err
    assert breakdown.main([str(tmp_path / "missing.jsonl")]) == 2
