"""`htr-run` and `htr-export` from the command line: formats, inputs, bad inputs, damaged bundles, exit codes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import line_images
from htr import Recognizer
from htr.cli import EXIT_BAD_INPUT, EXIT_BUNDLE, EXIT_USAGE, main

BIN = Path(sys.executable).parent


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of line images, one nested, plus what htr-run must skip in a folder."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    paths = []
    for i, array in enumerate(line_images(3, seed=21)):
        path = root / ("sub" if i == 2 else "") / f"line{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    (root / "notes.txt").write_text("not an image")
    return root, paths


@pytest.fixture(scope="module")
def bundle(exported):
    return exported("vit-roberta")[1]


def test_text_tsv_jsonl(bundle, images):
    root, paths = images
    expected = Recognizer(bundle).recognize(paths)
    result = run(*paths, "--model", bundle)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [r.text for r in expected]

    result = run(*paths, "--model", bundle, "--format", "tsv")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [(str(p), e.text) for p, e in zip(paths, expected)]

    result = run(*paths, "--model", bundle, "--format", "jsonl", "--beams", "2", "--max-length", "12")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    two_beams = Recognizer(bundle).recognize(paths, beams=2, max_length=12)
    assert [row["tokens"] for row in rows] == [list(r.tokens) for r in two_beams]
    assert set(rows[0]) == {"path", "layout", "text", "score", "tokens", "seconds"} and rows[0]["layout"] == "line"
    assert rows[0]["score"] == pytest.approx(two_beams[0].score)


def test_folders_globs_and_env_model(bundle, images):
    root, paths = images
    by_folder = run(root, "--format", "tsv", env={"HTR_MODEL": str(bundle)})
    assert by_folder.exit_code == 0, by_folder.output
    assert [line.split("\t")[0] for line in by_folder.stdout.splitlines()] == sorted(str(p) for p in paths)
    by_glob = run(str(root / "**" / "*.png"), "--model", bundle, "--format", "tsv")
    assert sorted(line.split("\t")[0] for line in by_glob.stdout.splitlines()) == sorted(str(p) for p in paths)


def test_bad_inputs_do_not_stop_the_good_ones(bundle, images, tmp_path):
    root, paths = images
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    args = [paths[0], tmp_path / "missing.jpg", corrupt, root / "notes.txt", paths[1], str(tmp_path / "*.tif")]
    result = run(*args, "--model", bundle, "--format", "tsv")
    assert result.exit_code == EXIT_BAD_INPUT
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(paths[0]), str(paths[1])]
    errors = result.stderr.splitlines()
    assert any("missing.jpg: no such file" in e for e in errors)
    assert any("corrupt.png" in e for e in errors)
    assert any("notes.txt: not an image file" in e for e in errors)
    assert any("*.tif: no file matches" in e for e in errors)
    assert "4 of 6 inputs could not be read" in errors[-1]
    assert "Traceback" not in result.output


def test_no_model_says_how_to_make_one(images, monkeypatch, tmp_path):
    import htr.manifest

    monkeypatch.setattr(htr.manifest, "DEFAULT_BUNDLE", tmp_path / "no-bundle-here")
    result = run(images[1][0], env={"HTR_MODEL": None})
    assert result.exit_code == EXIT_USAGE
    assert "htr-export" in result.stderr and "--model" in result.stderr


def test_shipped_default_bundle_is_used_without_model(bundle, images, monkeypatch):
    import htr.manifest

    monkeypatch.setattr(htr.manifest, "DEFAULT_BUNDLE", bundle)
    result = run(images[1][0], "--format", "jsonl", env={"HTR_MODEL": None})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] == list(Recognizer().recognize([images[1][0]])[0].tokens)


def damaged_copy(bundle: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    damage(copy)
    return copy


def _edit_manifest(edit):
    def apply(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        edit(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return apply


def _flip_byte(name):
    def apply(folder):
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / name).write_bytes(bytes(data))

    return apply


def _rename_input(manifest):
    manifest["graphs"]["decoder"]["inputs"][0]["name"] = "decoder_input_ids"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "decoder.onnx").unlink(), "decoder.onnx is missing"),
        (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
        (_flip_byte("encoder.onnx"), "encoder.onnx: sha256 mismatch"),
        (_flip_byte("tokenizer.json"), "tokenizer.json: sha256 mismatch"),
        (_edit_manifest(lambda m: m.update(schema_version=99)), "schema version 99 is not supported"),
        (_edit_manifest(_rename_input), "expected but not found: decoder_input_ids"),
        (_edit_manifest(lambda m: m["preprocessing"].pop("mean")), "missing key 'preprocessing.mean'"),
        (lambda f: (f / "manifest.json").write_text("{"), "cannot be read as JSON"),
        (_edit_manifest(lambda m: m["views"].update(count=0)), "views.count is 0, expected 1 or more"),
    ],
    ids=["missing-graph", "no-manifest", "encoder-sha", "tokenizer-sha", "schema", "graph-io", "manifest-key", "manifest-json", "views"],
)
def test_damaged_bundle_gets_one_clear_message(bundle, images, tmp_path, damage, message):
    copy = damaged_copy(bundle, tmp_path, damage)
    result = run(images[1][0], "--model", copy)
    assert result.exit_code == EXIT_BUNDLE
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_missing_bundle_folder(images, tmp_path):
    result = run(images[1][0], "--model", tmp_path / "nowhere")
    assert result.exit_code == EXIT_BUNDLE and "not a folder" in result.stderr


def test_help_and_bad_options(bundle, images):
    assert "--format" in run("--help").stdout
    assert run(images[1][0], "--model", bundle, "--beams", "0").exit_code == EXIT_USAGE
    assert run(images[1][0], "--model", bundle, "--format", "xml").exit_code == EXIT_USAGE
    assert run(images[1][0], "--model", bundle, "--ctc-weight", "1.5").exit_code == EXIT_USAGE
    assert run(images[1][0], "--model", bundle, "--views", "0").exit_code == EXIT_USAGE


def test_views_on_a_bundle_that_does_not_record_its_patch_width(bundle, images, tmp_path):
    assert run(images[1][0], "--model", bundle, "--views", "2").exit_code == 0
    old = damaged_copy(bundle, tmp_path, _edit_manifest(lambda m: m.pop("views")))  # as bundles exported before views were
    result = run(images[1][0], "--model", old, "--views", "2")
    assert result.exit_code == EXIT_USAGE and "does not record its encoder's patch width" in result.stderr and result.stdout == ""
    assert run(images[1][0], "--model", old).exit_code == 0


def test_ctc_weight_on_a_bundle_without_a_ctc_head(bundle, images):
    result = run(images[1][0], "--model", bundle, "--ctc-weight", "0.3")
    assert result.exit_code == EXIT_USAGE and "has no CTC head" in result.stderr and result.stdout == ""
    assert run(images[1][0], "--model", bundle, "--ctc-weight", "0").exit_code == 0


def test_console_scripts_for_real(tmp_path, exported, images):
    """One real subprocess run of each entry point: htr-export a checkpoint, then htr-run it."""
    folder, _ = exported("wide-lines")
    out = tmp_path / "bundle"
    export = subprocess.run([BIN / "htr-export", folder, out, "--verify", "2", "--views", "2"], capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr
    assert "2/2 identical" in export.stderr  # generate's tokens: the check reads one view
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["ok"] is True and manifest["views"] == {"count": 2, "patch_width": 8}
    read = subprocess.run([BIN / "htr-run", images[1][0], "--model", out, "--format", "jsonl"], capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["path"] == str(images[1][0])


def test_export_refuses_a_non_empty_folder_and_bad_model(tmp_path, exported):
    from htr.export.cli import main as export_main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    result = CliRunner().invoke(export_main, [str(exported("vit-roberta")[0]), str(tmp_path / "taken")])
    assert result.exit_code == 1 and "is not empty" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(export_main, [str(tmp_path / "nothing-here"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "cannot load" in result.stderr and "Traceback" not in result.output


def test_import_htr_is_torch_free(bundle, images):
    """A fresh interpreter imports htr and reads an image; torch, transformers and optimum never load."""
    code = (
        "import sys, htr\n"
        f"r = htr.Recognizer({str(bundle)!r}).recognize([{str(images[1][0])!r}])\n"
        "assert isinstance(r[0].text, str)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum', 'htr.export'))\n"
        "heavy += sorted(m for m in sys.modules if m.startswith('htr.export'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_installed_package_declares_the_runtime_requirements_only():
    """`pip install .` brings what the runtime imports; torch and transformers only with the export extra."""
    import importlib.metadata
    import re

    requires = importlib.metadata.requires("htr") or []
    base = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert {"onnxruntime", "numpy", "pillow", "click", "tokenizers"} <= base
    assert not base & {"torch", "transformers", "optimum", "optimum-onnx", "onnx"}
