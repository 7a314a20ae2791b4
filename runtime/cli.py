"""`htr-run`: read handwritten text lines from image files with an htr bundle."""

import glob
import json
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import click

from .errors import HtrError, ImageError
from .images import IMAGE_SUFFIXES, load_image

EXIT_BAD_INPUT = 1  # some images could not be read; the others were recognised
EXIT_USAGE = 2  # click's own code for bad command lines
EXIT_BUNDLE = 3  # the model bundle is missing or damaged, or an option cannot be used with it

NO_MODEL = (
    "no model bundle given: pass --model DIR or set HTR_MODEL=DIR.\n"
    "Make a bundle from a Hugging Face checkpoint with\n"
    "  pip install 'htr[export]' && htr-export microsoft/trocr-base-handwritten DIR"
)


def expand_inputs(args: Tuple[str, ...]) -> Iterator[Tuple[str, str]]:
    """Yield `(path, problem)` for each image named by files, folders (recursively) and globs; problem is '' when none."""
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                yield arg, "folder holds no image files"
            yield from ((str(p), "") for p in found)
        elif path.exists():
            yield arg, ""
        elif glob.has_magic(arg):
            found = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                yield arg, "no file matches this pattern"
            yield from ((p, "") for p in found)
        else:
            yield arg, "no such file"


def _batches(items: List[Tuple[str, str]], size: int) -> Iterator[List[Tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _format(fmt: str, path: str, result, seconds: float) -> str:
    if fmt == "text":
        return result.text
    if fmt == "tsv":
        return f"{path}\t{result.text}\t{result.score:.6f}"
    row = {"path": path, "text": result.text, "score": result.score, "tokens": list(result.tokens), "seconds": round(seconds, 4)}
    return json.dumps(row, ensure_ascii=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--model", "-m", envvar="HTR_MODEL", type=click.Path(path_type=Path), help="Bundle folder made by htr-export [env: HTR_MODEL].")
@click.option("--beams", type=click.IntRange(min=1), help="Beam width; 1 is greedy. Default: the bundle's (4 unless the checkpoint set one).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images decoded together.")
@click.option("--max-length", type=click.IntRange(min=2), help="Most tokens per line, the start token included. Default: the bundle's.")
@click.option("--format", "fmt", type=click.Choice(["text", "tsv", "jsonl"]), default="text", show_default=True, help="text: one line of text per image; tsv: path, text, score; jsonl: path, text, score, tokens, seconds.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="ONNX Runtime provider; cuda needs onnxruntime-gpu.")
@click.option("--threads", type=click.IntRange(min=1), envvar="HTR_THREADS", help="Threads per ONNX Runtime session [env: HTR_THREADS]. Default: ONNX Runtime's choice.")
def main(inputs, model, beams, batch_size, max_length, fmt, provider, threads):
    """Read handwritten text lines from IMAGE files, folders (searched recursively) or glob patterns.

    Results go to stdout in input order; problems with single images go to stderr, one line each,
    and the other images are still read. Exit status: 0 all read, 1 some images could not be read,
    2 bad command line, 3 the model bundle is missing or damaged.
    """
    if model is None:
        click.echo(f"htr-run: {NO_MODEL}", err=True)
        sys.exit(EXIT_USAGE)
    from .recognizer import Recognizer

    try:
        recognizer = Recognizer(model, provider=provider, threads=threads)
    except HtrError as e:
        click.echo(f"htr-run: {e}", err=True)
        sys.exit(EXIT_BUNDLE)

    items = list(expand_inputs(inputs))
    failed = 0
    show_progress = sys.stderr.isatty() and len(items) > batch_size
    with click.progressbar(length=len(items), label="reading", file=sys.stderr if show_progress else None, hidden=not show_progress) as bar:
        for batch in _batches(items, batch_size):
            paths, images = [], []
            for path, problem in batch:
                try:
                    if problem:
                        raise ImageError(f"{path}: {problem}")
                    images.append(load_image(path))
                    paths.append(path)
                except ImageError as e:
                    failed += 1
                    click.echo(f"htr-run: {e}", err=True)
            if images:
                started = time.perf_counter()
                try:
                    results = recognizer.recognize(images, beams=beams, batch_size=batch_size, max_length=max_length)
                except HtrError as e:
                    click.echo(f"htr-run: {e}", err=True)
                    sys.exit(EXIT_BUNDLE)
                share = (time.perf_counter() - started) / len(images)
                for path, result in zip(paths, results):
                    click.echo(_format(fmt, path, result, share))
            bar.update(len(batch))
    if failed:
        click.echo(f"htr-run: {failed} of {len(items)} inputs could not be read", err=True)
        sys.exit(EXIT_BAD_INPUT)
