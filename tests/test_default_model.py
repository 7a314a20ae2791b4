"""The bundle shipped inside htr (htr/models/default: the demo model, int8): there, small, and reading hands it never saw."""

import json
from pathlib import Path

import pytest

from htr import Recognizer
from htr.errors import HtrError
from htr.evaluate import evaluate, read_labels
from htr.manifest import default_bundle

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MAX_BYTES = 25_000_000  # the size target of the shipped bundle
# What the shipped bundle (the demo model in training: step 143500, beam search with its CTC head over 3 shifted
# views of each line, held-out CER 10-10.5%) measured when it was shipped, plus a margin for other onnxruntime builds; a
# bundle that reads worse is a regression. Tighten both as the demo model improves (target: 10% on held-out fonts).
HELD_OUT_CER = 0.14  # measured 0.117 on these 40 lines (1 view 0.131; without the CTC head 0.170-0.173)
# Two lines only: from step 75100 on it misreads "Meet me at" ("Meet ne at" at step 143500) where step 69300 read
# it right, and 3 views read that line worse still ("Meek ne at time station an"), though they read thousands of
# held-out lines better (models/demo/README.md), so this is looser than the bound above.
EXAMPLE_CER = 0.2  # measured 0.167 on examples/ (1 view 0.115; without the CTC head 0.128)


def shipped() -> Path:
    folder = default_bundle()
    assert folder is not None, "htr/models/default is missing: scripts/ship-default.sh exports it from models/demo"
    return folder


def test_default_bundle_is_small_int8_and_judged():
    manifest = json.loads((shipped() / "manifest.json").read_text())
    assert manifest["precision"] == "int8-static"
    assert sum(f["bytes"] for f in manifest["files"].values()) <= MAX_BYTES
    accuracy = manifest["accuracy"]  # recorded by htr-export --int8 on held-out lines
    assert accuracy["judged"] and accuracy["cer_increase_points"] <= accuracy["max_cer_increase"]
    assert manifest["ctc"]["weight"] > 0 and Recognizer().has_ctc_head  # the demo model reads best with its CTC head
    assert manifest["views"]["count"] == 3  # and over 3 shifted views of each line


def test_default_bundle_reads_lines_in_held_out_fonts():
    from htr.train.synth import SyntheticLines

    try:
        lines = SyntheticLines("eval", seed=31)
    except HtrError as e:
        pytest.skip(str(e))
    result = evaluate(Recognizer(), [lines[i] for i in range(40)])
    assert result.cer <= HELD_OUT_CER


def test_default_bundle_reads_the_example_lines():
    rows = read_labels(EXAMPLES)
    result = evaluate(Recognizer(), rows)
    assert all(result.texts) and result.cer <= EXAMPLE_CER


def test_views_benchmark_measures_each_count(capsys):
    """benchmarks/views.py on the example lines: a row per count, the first the baseline of the others."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "views.py"
    spec = importlib.util.spec_from_file_location("views_benchmark", script)
    views = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(views)
    assert views.main(["--data", str(EXAMPLES), "--views", "1,3", "--timed", "2", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x | 1.00x |") and "to" in rows[1].split("|")[3]
