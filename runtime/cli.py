"""`htr-run`: read handwritten text lines from image files with an htr bundle."""

import glob
import json
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import click

from .errors import HtrError, ImageError, OptionsError
from .images import IMAGE_SUFFIXES, load_image
from .manifest import default_bundle

EXIT_BAD_INPUT = 1  # some images could not be read; the others were recognised
EXIT_USAGE = 2  # click's own code for bad command lines
EXIT_BUNDLE = 3  # the model bundle is missing or damaged, or an option cannot be used with it

NO_MODEL = (
    "no model bundle given, and this install has no default bundle: pass --model DIR or set HTR_MODEL=DIR.\n"
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


def _row(path: str, result, seconds: float) -> dict:
    """Return the JSON row of one input: a line's text, or a page's lines with their boxes."""
    if hasattr(result, "lines"):
        lines = [{"box": list(line.box), "polygon": [list(p) for p in line.polygon], "text": line.text, "score": line.score,
                  "tokens": list(line.tokens), "region": line.region} for line in result.lines]
        return {"path": path, "layout": "page", "text": result.text, "width": result.width, "height": result.height,
                "rotation": round(result.rotation, 2), "lines": lines, "seconds": round(seconds, 4)}
    return {"path": path, "layout": "line", "text": result.text, "score": result.score, "tokens": list(result.tokens), "seconds": round(seconds, 4)}


def _format(fmt: str, path: str, result, seconds: float) -> str:
    lines = result.lines if hasattr(result, "lines") else [result]
    if fmt == "text":
        return "\n".join(line.text for line in lines)
    if fmt == "tsv":
        return "\n".join(f"{path}\t{line.text}\t{line.score:.6f}" for line in lines)
    return json.dumps(_row(path, result, seconds), ensure_ascii=False)


def _side_path(target: Path, source: str, suffix: str, many: bool) -> Path:
    """Return where an output for `source` goes: `target` itself for one input, else `target/<stem><suffix>`."""
    if many or target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return target / (Path(source).stem + suffix)
    return target


def _check_options(recognizer, options, program: str):
    """Return the settings `options` resolve to for this bundle; exit with a usage error when they do not
    suit it (say, a CTC weight and no CTC head)."""
    try:
        return recognizer.check_options(options)
    except OptionsError as e:
        click.echo(f"{program}: {e}", err=True)
        sys.exit(EXIT_USAGE)


def _read(recognizer, loaded, layout, beams, batch_size, max_length, options=None):
    """Return `(result, seconds)` per loaded image: lines read together in one batch, pages one by one."""
    from .page import analyse, is_line_shaped

    results = [None] * len(loaded)
    line_indices, layouts = [], {}
    for i, (_, image) in enumerate(loaded):
        if layout == "line" or (layout == "auto" and is_line_shaped(image)):
            line_indices.append(i)
            continue
        found = analyse(image)
        if layout == "auto" and len(found.lines) <= 1:
            line_indices.append(i)
        else:
            layouts[i] = found
    if line_indices:
        started = time.perf_counter()
        lines = recognizer.recognize([loaded[i][1] for i in line_indices], beams=beams, batch_size=batch_size, max_length=max_length, options=options)
        share = (time.perf_counter() - started) / len(line_indices)
        for i, result in zip(line_indices, lines):
            results[i] = (result, share)
    for i, found in layouts.items():
        started = time.perf_counter()
        page = recognizer.read_page(loaded[i][1], beams=beams, batch_size=batch_size, max_length=max_length, options=options, layout=found)
        results[i] = (page, time.perf_counter() - started)
    return results


def _write_extras(path: str, image, result, page_xml: Optional[Path], overlay: Optional[Path], many: bool) -> None:
    """Write the PAGE XML and overlay asked for; a single line is written as a page of one line."""
    if not (page_xml or overlay):
        return
    from .page_output import draw_overlay, page_xml as to_xml
    from .recognizer import Page, PageLine

    page = result
    if not hasattr(result, "lines"):
        w, h = image.size
        corners = ((0, 0), (w, 0), (w, h), (0, h))
        page = Page(w, h, 0.0, [PageLine((0, 0, w, h), corners, result.text, result.score, result.tokens)])
    if page_xml:
        _side_path(page_xml, path, ".xml", many).write_text(to_xml(page, Path(path).name), encoding="utf-8")
    if overlay:
        draw_overlay(image, page).save(_side_path(overlay, path, ".overlay.png", many))


CTC_WEIGHT_HELP = ("Weight of the bundle's CTC head in beam search (0 to 1; 0: exactly transformers' generate). "
                   "Default: the bundle's (0 where it has no CTC head).")
VIEWS_HELP = ("Read each line as N copies shifted by 1/N of an encoder patch column and average their readings: "
              "reads better, at up to N times the time a line (1: as the model reads it, exactly transformers' generate). Default: the bundle's.")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--model", "-m", envvar="HTR_MODEL", type=click.Path(path_type=Path), help="Bundle folder made by htr-export [env: HTR_MODEL]. Default: the bundle shipped with htr, where this install has one.")
@click.option("--beams", type=click.IntRange(min=1), help="Beam width; 1 is greedy. Default: the bundle's (4 unless the checkpoint set one).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images decoded together.")
@click.option("--max-length", type=click.IntRange(min=2), help="Most tokens per line, the start token included. Default: the bundle's.")
@click.option("--ctc-weight", type=click.FloatRange(0.0, 1.0), help=CTC_WEIGHT_HELP)
@click.option("--views", type=click.IntRange(min=1), metavar="N", help=VIEWS_HELP)
@click.option("--format", "fmt", type=click.Choice(["text", "tsv", "jsonl", "json"]), default="text", show_default=True,
              help="text: the text (a page's lines in order); tsv: path, text, score per line; jsonl: one object per image (pages: lines with box, polygon, text, score); json: those objects as one array.")
@click.option("--layout", type=click.Choice(["auto", "line", "page"]), default="auto", show_default=True,
              help="line: each image is one text line; page: find the lines first; auto: an image under 150 pixels high, at least 8x wider than high, or where at most one line is found, is a line.")
@click.option("--page-xml", type=click.Path(path_type=Path), help="Also write PAGE XML (2019-07-15): a file for one image, else a folder of <name>.xml.")
@click.option("--overlay", type=click.Path(path_type=Path), help="Also draw the line boxes and text on the image: a PNG file for one image, else a folder of <name>.overlay.png.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="ONNX Runtime provider; cuda needs onnxruntime-gpu.")
@click.option("--threads", type=click.IntRange(min=1), envvar="HTR_THREADS", help="Threads per ONNX Runtime session [env: HTR_THREADS]. Default: ONNX Runtime's choice.")
def main(inputs, model, beams, batch_size, max_length, ctc_weight, views, fmt, layout, page_xml, overlay, provider, threads):
    """Read handwritten text lines or whole pages from IMAGE files, folders (searched recursively) or glob patterns.

    Results go to stdout in input order; problems with single images go to stderr, one line each,
    and the other images are still read. Exit status: 0 all read, 1 some images could not be read,
    2 bad command line, 3 the model bundle is missing or damaged.
    """
    model = model or default_bundle()
    if model is None:
        click.echo(f"htr-run: {NO_MODEL}", err=True)
        sys.exit(EXIT_USAGE)
    from .recognizer import GenerationOptions, Recognizer

    try:
        recognizer = Recognizer(model, provider=provider, threads=threads)
    except HtrError as e:
        click.echo(f"htr-run: {e}", err=True)
        sys.exit(EXIT_BUNDLE)
    options = GenerationOptions(ctc_weight=ctc_weight, views=views)
    _check_options(recognizer, options, "htr-run")

    items = list(expand_inputs(inputs))
    many = len(items) > 1
    failed = 0
    rows = []
    show_progress = sys.stderr.isatty() and len(items) > batch_size
    with click.progressbar(length=len(items), label="reading", file=sys.stderr if show_progress else None, hidden=not show_progress) as bar:
        for batch in _batches(items, batch_size):
            loaded = []
            for path, problem in batch:
                try:
                    if problem:
                        raise ImageError(f"{path}: {problem}")
                    loaded.append((path, load_image(path)))
                except ImageError as e:
                    failed += 1
                    click.echo(f"htr-run: {e}", err=True)
            try:
                results = _read(recognizer, loaded, layout, beams, batch_size, max_length, options)
            except HtrError as e:
                click.echo(f"htr-run: {e}", err=True)
                sys.exit(EXIT_BUNDLE)
            for (path, image), (result, seconds) in zip(loaded, results):
                if fmt == "json":
                    rows.append(_row(path, result, seconds))
                else:
                    click.echo(_format(fmt, path, result, seconds))
                _write_extras(path, image, result, page_xml, overlay, many)
            bar.update(len(batch))
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=1))
    if failed:
        click.echo(f"htr-run: {failed} of {len(items)} inputs could not be read", err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, metavar="[BUNDLE...] DATA")
@click.option("--beams", type=click.IntRange(min=1), help="Beam width. Default: each bundle's own.")
@click.option("--ctc-weight", type=click.FloatRange(0.0, 1.0), help=CTC_WEIGHT_HELP)
@click.option("--views", type=click.IntRange(min=1), metavar="N", help=VIEWS_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), envvar="HTR_THREADS", help="Threads per ONNX Runtime session [env: HTR_THREADS].")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N lines.")
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write one JSON row per line: path, reference, and each bundle's text and CER.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Summary on stdout as a table or as one JSON object.")
def eval_main(paths, beams, ctc_weight, views, batch_size, threads, limit, jsonl_path, fmt):
    """Measure CER and WER of one or more BUNDLEs on DATA (a folder with labels.tsv, or the labels.tsv file).

    Without a BUNDLE it measures the bundle shipped with htr. With two bundles (say fp32 and int8)
    it also prints the CER difference with a 95% interval (a paired bootstrap over the lines: when it
    holds 0, these lines show no difference) and the share of lines both read identically. Exit
    status: 0 done, 1 some images could not be read (counted as empty output), 2 bad command line,
    3 a bundle is missing or damaged.
    """
    from .evaluate import agreement, cer_difference_interval, character_error_rate, evaluate, read_labels
    from .recognizer import GenerationOptions, Recognizer

    options = GenerationOptions(num_beams=beams, ctc_weight=ctc_weight, views=views)
    bundles, data = [Path(p) for p in paths[:-1]], Path(paths[-1])
    if not bundles:
        shipped = default_bundle()
        if shipped is None:
            raise click.UsageError("give a BUNDLE before DATA: this install has no default bundle")
        bundles = [shipped]
    try:
        rows = read_labels(data)[:limit]
    except HtrError as e:
        click.echo(f"htr-eval: {e}", err=True)
        sys.exit(EXIT_USAGE)
    results, settings, unreadable = [], [], set()
    for bundle in bundles:
        try:
            recognizer = Recognizer(bundle, threads=threads)
        except HtrError as e:
            click.echo(f"htr-eval: {e}", err=True)
            sys.exit(EXIT_BUNDLE)
        used = _check_options(recognizer, options, "htr-eval")
        settings.append({"beams": used.num_beams, "ctc_weight": used.ctc_weight, "views": used.views})
        show = sys.stderr.isatty()
        with click.progressbar(length=len(rows), label=str(bundle), file=sys.stderr if show else None, hidden=not show) as bar:
            def progress(done=0, error=None):
                if error and error not in unreadable:
                    unreadable.add(error)
                    click.echo(f"htr-eval: {error}", err=True)
                bar.update(done)

            results.append(evaluate(recognizer, rows, batch_size=batch_size, progress=progress, options=options))
    summary = {
        "data": str(data),
        "lines": len(rows),
        "unreadable": len(unreadable),
        "bundles": [{"bundle": str(b), "cer": r.cer, "wer": r.wer, "seconds_per_line": r.seconds / max(len(rows), 1), **used}
                    for b, r, used in zip(bundles, results, settings)],
    }
    if len(results) == 2:
        summary["cer_increase_points"] = 100 * (results[1].cer - results[0].cer)
        summary["cer_increase_interval_points"] = cer_difference_interval(results[0], results[1], [r[1] for r in rows])
        summary["identical_share"] = agreement(results[0], results[1])
    if jsonl_path:
        with open(jsonl_path, "w", encoding="utf-8") as f:
            for i, (path, reference) in enumerate(rows):
                row = {"path": path, "reference": reference}
                row["texts"] = [r.texts[i] for r in results]
                row["cer"] = [None if r.texts[i] is None else character_error_rate([r.texts[i]], [reference]) for r in results]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{len(rows)} lines from {data}")
        click.echo("| bundle | CER | WER | s/line | beams, CTC weight, views |\n|---|---|---|---|---|")
        for entry in summary["bundles"]:
            click.echo(f"| {entry['bundle']} | {100 * entry['cer']:.2f}% | {100 * entry['wer']:.2f}% | {entry['seconds_per_line']:.3f} | "
                       f"{entry['beams']}, {entry['ctc_weight']:g}, {entry['views']} |")
        if len(results) == 2:
            low, high = summary["cer_increase_interval_points"]
            click.echo(f"second - first: CER {summary['cer_increase_points']:+.2f} points (95% interval {low:+.2f} to {high:+.2f}, "
                       f"paired bootstrap over lines); identical text on {100 * summary['identical_share']:.1f}% of lines")
    if unreadable:
        sys.exit(EXIT_BAD_INPUT)
