"""How many shifted views to read: CER and time a line of one bundle for each count, against one view.

Reads the same labelled lines with `GenerationOptions(views=N)` for each N asked for and prints one
table: CER, the change against one view in points with its 95% interval (paired bootstrap over the
lines, as htr-eval), seconds a line at batch 8 and at batch 1 (the first `--timed` lines, best of
`--repeats`), and those times as ratios of one view's.

    python benchmarks/views.py                                    # the shipped bundle, 1-4 views
    python benchmarks/views.py --model BUNDLE --data DIR --views 1,2,3
"""

import argparse
import time
from pathlib import Path

from htr import GenerationOptions, Recognizer
from htr.evaluate import cer_difference_interval, evaluate, read_labels


def seconds_a_line(recognizer, images, views: int, batch_size: int, repeats: int) -> float:
    options = GenerationOptions(views=views)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        recognizer.recognize(images, batch_size=batch_size, options=options)
        best = min(best, (time.perf_counter() - started) / len(images))
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="bundle folder; default: the bundle shipped with htr")
    parser.add_argument("--data", type=Path, help="labelled lines (folder with labels.tsv); default: synthetic lines in held-out fonts")
    parser.add_argument("--lines", type=int, default=500, help="lines to measure CER on")
    parser.add_argument("--seed", type=int, default=301, help="seed of the synthetic lines, where --data is not given")
    parser.add_argument("--views", default="1,2,3,4", help="comma-separated counts; the first is the baseline")
    parser.add_argument("--timed", type=int, default=48, help="lines timed at each batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads per ONNX Runtime session; default: ONNX Runtime's choice")
    args = parser.parse_args(argv)

    if args.data is not None:
        rows = read_labels(args.data)[: args.lines]
    else:
        from htr.train.synth import SyntheticLines

        lines = SyntheticLines("eval", seed=args.seed)
        rows = [lines[i] for i in range(args.lines)]
    counts = [int(v) for v in args.views.split(",")]
    recognizer = Recognizer(args.model, threads=args.threads)
    recognizer.check_options(GenerationOptions(views=max(counts)))
    references = [r[1] for r in rows]
    images = [r[0] for r in rows[: args.timed]]

    print(f"# views: {len(rows)} lines, {recognizer.manifest.root}, {args.threads or 'default'} threads")
    print("| views | CER | change, points (95%) | s/line batch 8 | s/line batch 1 | time x (batch 8) | time x (batch 1) |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for count in counts:
        result = evaluate(recognizer, rows, options=GenerationOptions(views=count))
        times = [seconds_a_line(recognizer, images, count, batch, args.repeats) for batch in (8, 1)]
        if base is None:
            base = (result, times)
            change = ""
        else:
            low, high = cer_difference_interval(base[0], result, references)
            change = f"{100 * (result.cer - base[0].cer):+.2f} ({low:+.2f} to {high:+.2f})"
        print(f"| {count} | {100 * result.cer:.2f}% | {change} | {times[0]:.3f} | {times[1]:.3f} | "
              f"{times[0] / base[1][0]:.2f}x | {times[1] / base[1][1]:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
