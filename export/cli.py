"""`htr-export`: turn a Hugging Face VisionEncoderDecoder checkpoint into an htr bundle and verify it."""

import shutil
import sys
from pathlib import Path

import click

from htr.errors import HtrError

EXIT_VERIFY = 4  # the bundle was written but does not reproduce PyTorch


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--verify", "verify_count", type=click.IntRange(min=0), default=4, show_default=True, help="Line images on which to compare the bundle with PyTorch generate; 0 skips the check.")
@click.option("--verify-images", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of line images for the check. Default: synthetic lines.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
def main(model, out_dir, verify_count, verify_images, force):
    """Export MODEL (a hub id such as microsoft/trocr-base-handwritten, or a save_pretrained folder) to OUT_DIR.

    Writes encoder.onnx, cross_attention.onnx, decoder.onnx, tokenizer.json and manifest.json;
    then runs the bundle with the htr runtime and PyTorch's generate on a few lines and compares
    the tokens. Exit status: 0 done, 1 export failed, 4 the bundle does not reproduce PyTorch.
    """
    from .bundle import export_bundle, load_checkpoint, record_verification
    from .verify import verification_images, verify_bundle

    def log(message: str) -> None:
        click.echo(message, err=True)

    try:
        if force and out_dir.exists():
            shutil.rmtree(out_dir)
        log(f"loading {model}")
        checkpoint = load_checkpoint(model)
        manifest = export_bundle(checkpoint, out_dir, log=log)
        size = sum(f["bytes"] for f in manifest["files"].values())
        log(f"wrote {out_dir} ({size / 1e6:.1f} MB, {manifest['architecture']['parameters'] / 1e6:.1f}M parameters)")
        if verify_count:
            report = verify_bundle(checkpoint, out_dir, verification_images(verify_images, verify_count), log=log)
            record_verification(out_dir, report)
            if not report["ok"]:
                log("htr-export: the bundle's tokens differ from PyTorch generate (see above)")
                sys.exit(EXIT_VERIFY)
    except HtrError as e:
        click.echo(f"htr-export: {e}", err=True)
        sys.exit(1)
    click.echo(str(out_dir))
