"""`htr-export`: turn a Hugging Face VisionEncoderDecoder checkpoint into an htr bundle and verify it."""

import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import click

from htr.errors import HtrError

from .bundle import DEFAULT_CTC_WEIGHT

EXIT_VERIFY = 4  # the bundle was written but does not reproduce PyTorch
EXIT_ACCURACY = 5  # the quantized bundle loses more accuracy than allowed; nothing was kept


def default_calibration() -> Path:
    """Return the calibration lines shipped with htr (the repository's calibration_data/)."""
    from importlib.util import find_spec

    spec = find_spec("htr.calibration_data")
    if spec is None or not spec.submodule_search_locations:
        raise HtrError("the calibration lines shipped with htr are missing; pass --calibration DIR")
    return Path(list(spec.submodule_search_locations)[0])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--int8", is_flag=True, help="int8 bundle: static QDQ quantization calibrated on handwriting lines (same as --quantize static).")
@click.option("--quantize", type=click.Choice(["static", "dynamic", "fp16"]), help="static: int8 calibrated on real activations; dynamic: int8 weights, activations quantized at run time; fp16: half-precision weights (for GPU providers).")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of line images (labels.tsv optional) to calibrate static int8 on. Default: calibration_data/ shipped with htr.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--activations", type=click.Choice(["u8", "s8"]), default="u8", show_default=True, help="Activation type of static int8 (weights are always s8, per channel).")
@click.option("--eval-data", type=click.Path(exists=True, path_type=Path), help="Labelled lines (folder with labels.tsv) to compare fp32 and quantized accuracy on; never the calibration lines. Default: synthetic lines in the held-out fonts.")
@click.option("--eval-lines", type=click.IntRange(min=1), default=100, show_default=True, help="How many of those lines to compare on; more lines narrow the 95% interval of the CER difference and take longer.")
@click.option("--max-cer-increase", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Fail when the quantized CER is more than this many points above fp32.")
@click.option("--keep-anyway", is_flag=True, help="Keep the quantized bundle even when it fails --max-cer-increase.")
@click.option("--verify", "verify_count", type=click.IntRange(min=0), default=4, show_default=True, help="Line images on which to compare the fp32 bundle with PyTorch generate; 0 skips the check.")
@click.option("--verify-images", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of line images for the check. Default: synthetic lines.")
@click.option("--ctc-weight", type=click.FloatRange(0.0, 1.0), default=DEFAULT_CTC_WEIGHT, show_default=True,
              help="Where MODEL is a folder with htr-train's CTC head (ctc_head.safetensors), the bundle takes it along and the runtime "
                   "weighs its reading in beam search with this weight by default; 0 keeps generate's search (htr-run --ctc-weight "
                   "changes it at run time).")
@click.option("--views", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shifted copies of each line the runtime reads by default and averages (htr-run --views); more read better "
                   "and take up to that many times the time a line. 1: as the model reads it, as transformers' generate does.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
def main(model, out_dir, int8, quantize, calibration, calibration_method, activations, eval_data, eval_lines, max_cer_increase, keep_anyway, verify_count, verify_images, ctc_weight, views, force):
    """Export MODEL (a hub id such as microsoft/trocr-base-handwritten, or a save_pretrained folder) to OUT_DIR.

    Writes encoder.onnx, cross_attention.onnx, decoder.onnx, tokenizer.json and manifest.json;
    then runs the fp32 bundle with the htr runtime and PyTorch's generate on a few lines and compares
    the tokens. With --int8 (or --quantize) the fp32 bundle is then quantized, and both are compared
    on held-out lines. Exit status: 0 done, 1 export failed, 4 the bundle does not reproduce
    PyTorch, 5 the quantized bundle loses more accuracy than --max-cer-increase allows.
    """
    from .bundle import export_bundle, load_checkpoint, record_in_manifest
    from .verify import verification_images, verify_bundle

    def log(message: str) -> None:
        click.echo(message, err=True)

    if int8 and quantize not in (None, "static"):
        raise click.UsageError("--int8 is static int8; it cannot be combined with --quantize " + quantize)
    mode = "static" if int8 else quantize
    try:
        if out_dir.exists() and any(out_dir.iterdir()) and not force:
            raise HtrError(f"{out_dir} exists and is not empty; choose a new folder or pass --force")
        log(f"loading {model}")
        checkpoint = load_checkpoint(model)
        with tempfile.TemporaryDirectory(prefix="htr-fp32-") as work:
            fp32_dir = Path(work) / "fp32" if mode else out_dir
            if fp32_dir.exists():
                shutil.rmtree(fp32_dir)
            manifest = export_bundle(checkpoint, fp32_dir, log=log, ctc_weight=ctc_weight, views=views)
            size = sum(f["bytes"] for f in manifest["files"].values())
            log(f"wrote fp32 graphs ({size / 1e6:.1f} MB, {manifest['architecture']['parameters'] / 1e6:.1f}M parameters)")
            if verify_count:
                report = verify_bundle(checkpoint, fp32_dir, verification_images(verify_images, verify_count), log=log)
                record_in_manifest(fp32_dir, "verification", report)
                if not report["ok"]:
                    log("htr-export: the bundle's tokens differ from PyTorch generate (see above)")
                    if mode is None:
                        sys.exit(EXIT_VERIFY)
                    raise HtrError("the fp32 bundle does not reproduce PyTorch, so it is not quantized")
            if mode:
                _quantize(fp32_dir, out_dir, mode, calibration, calibration_method, activations, eval_data, eval_lines, max_cer_increase, keep_anyway, force, log)
    except HtrError as e:
        click.echo(f"htr-export: {e}", err=True)
        sys.exit(1)
    click.echo(str(out_dir))


def _quantize(fp32_dir, out_dir, mode, calibration, method, activations, eval_data, eval_lines, max_cer_increase, keep_anyway, force, log):
    from htr.evaluate import read_labels

    from .bundle import list_images, record_in_manifest
    from .quantize import QuantizeSettings, compare_accuracy, evaluation_rows, quantize_bundle

    images = []
    if mode == "static":
        folder = calibration or default_calibration()
        images = [r[0] for r in read_labels(folder)] if (folder / "labels.tsv").is_file() else [str(p) for p in list_images(folder)]
        if not images:
            raise HtrError(f"{folder}: no calibration images found")
    if force and out_dir.exists():
        shutil.rmtree(out_dir)
    settings = QuantizeSettings(mode=mode, method=method, activations=activations)
    manifest = quantize_bundle(fp32_dir, out_dir, settings, images, log=log)
    fp32_bytes = sum(f["bytes"] for f in json_files(fp32_dir).values())
    size = sum(f["bytes"] for f in manifest["files"].values())
    log(f"wrote {out_dir} ({size / 1e6:.1f} MB, {size / fp32_bytes:.3f} x the fp32 bundle)")
    try:
        rows = evaluation_rows(eval_data, eval_lines)
    except HtrError as e:
        log(f"accuracy not compared: {e}; pass --eval-data DIR (labelled lines)")
        return
    report = compare_accuracy(fp32_dir, out_dir, rows, log)
    report["max_cer_increase"] = max_cer_increase
    record_in_manifest(out_dir, "accuracy", report)
    if report["judged"] and report["cer_increase_points"] > max_cer_increase and not keep_anyway:
        shutil.rmtree(out_dir)
        log(f"htr-export: the {mode} bundle's CER is {report['cer_increase_points']:.2f} points above fp32 "
            f"(allowed: {max_cer_increase}); removed {out_dir}. Try another --calibration-method or --activations, "
            "more --calibration lines, or --keep-anyway")
        sys.exit(EXIT_ACCURACY)
    if report["judged"] and report["cer_increase_points"] <= max_cer_increase:
        note = _interval_note(report, max_cer_increase)
        if note:
            log(note)


def _interval_note(report: dict, max_cer_increase: float) -> Optional[str]:
    """Say so when the lines passed the gate on the point estimate but are too few to show the increase is within it."""
    increase = report["cer_increase_points"]
    high = report["cer_increase_interval_points"][1]
    if high <= max_cer_increase:
        return None
    lines = report["lines"]
    more = "more --eval-lines narrow it"
    if increase < max_cer_increase:  # the interval's half-width shrinks as 1/sqrt(lines)
        more = f"about {math.ceil(lines * ((high - increase) / (max_cer_increase - increase)) ** 2)} lines (--eval-lines) would narrow it to the allowance"
    return (f"htr-export: kept, but the 95% interval of the increase reaches {high:+.2f} points, above the allowed "
            f"{max_cer_increase}: {lines} lines cannot show int8 stays within it; {more}")


def json_files(bundle_dir: Path) -> dict:
    import json

    from htr.manifest import MANIFEST_NAME

    return json.loads((Path(bundle_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
