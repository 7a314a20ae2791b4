"""Which int8 settings to use: size, speed and accuracy of each quantization choice against fp32.

For a checkpoint (a trained one, for accuracy: e.g. models/demo) or a real TrOCR architecture
with random weights (speed and size only), it exports the fp32 bundle once, then quantizes it with
each configuration and prints one table: bundle size as a share of fp32, seconds per line
(4 beams, batch 1, same lines for all), CER on held-out lines, the CER change in points with its
95% interval (paired bootstrap over the lines, as htr-eval) and the share of lines read exactly as
fp32 reads them.

    python benchmarks/quantization.py --model models/demo --eval-lines 200
    python benchmarks/quantization.py --architecture base --steps 32 --lines 4
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny import TROCR, real_architecture  # noqa: E402

CONFIGS = {
    "dynamic": dict(mode="dynamic", op_types=("MatMul",)),
    "dynamic+gather": dict(mode="dynamic", op_types=("MatMul", "Gather")),
    "static-u8-minmax": dict(mode="static", activations="u8", method="minmax"),
    "static-u8-float-lm-head": dict(mode="static", activations="u8", method="minmax", float_lm_head=True),
    "static-u8-minmax-unfused": dict(mode="static", activations="u8", method="minmax", fuse_bias=False),
    "static-u8-minmax-qout": dict(mode="static", activations="u8", method="minmax", quantized_outputs=True),
    "static-u8-minmax-prep": dict(mode="static", activations="u8", method="minmax", preprocess=True),
    "static-s8-minmax": dict(mode="static", activations="s8", method="minmax"),
    "static-u8-entropy": dict(mode="static", activations="u8", method="entropy"),
    "static-u8-percentile": dict(mode="static", activations="u8", method="percentile"),
    "static-u8-matmul-only": dict(mode="static", activations="u8", method="minmax", op_types=("MatMul",)),
    "fp16": dict(mode="fp16"),
}


def bundle_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint folder or hub id")
    source.add_argument("--architecture", choices=["small", "base", "large"], help="real TrOCR architecture, random weights")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    parser.add_argument("--calibration", type=Path, default=Path(__file__).resolve().parents[1] / "calibration_data")
    parser.add_argument("--calibration-lines", type=int, default=100)
    parser.add_argument("--eval-data", type=Path, help="labelled lines; default: synthetic lines in held-out fonts")
    parser.add_argument("--eval-lines", type=int, default=200)
    parser.add_argument("--lines", type=int, default=16, help="lines timed per configuration")
    parser.add_argument("--steps", type=int, help="force this many decode steps per timed line (random weights)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from htr import GenerationOptions, Recognizer
    from htr.evaluate import agreement, cer_difference_interval, evaluate, read_labels
    from htr.export.bundle import export_bundle, load_checkpoint
    from htr.export.quantize import QuantizeSettings, evaluation_rows, quantize_bundle

    calibration = [r[0] for r in read_labels(args.calibration)][: args.calibration_lines]
    rows = evaluation_rows(args.eval_data, args.eval_lines) if args.model else []
    timed_lines = [r[0] for r in evaluation_rows(args.eval_data, args.lines)] if args.model else None
    with tempfile.TemporaryDirectory(prefix="htr-quant-") as work:
        work = Path(work)
        model = args.model
        if args.architecture:
            if not TROCR.is_dir():
                sys.exit(f"needs the TrOCR configs at {TROCR}")
            model = str(real_architecture(f"trocr-{args.architecture}-handwritten", work / "checkpoint"))
        if timed_lines is None:
            from htr.export.verify import sample_lines

            timed_lines = sample_lines(args.lines)
        print(f"exporting {model}", file=sys.stderr, flush=True)
        export_bundle(load_checkpoint(model), work / "fp32", log=lambda m: None)
        options = GenerationOptions(num_beams=4, **({"min_length": args.steps + 1, "max_length": args.steps + 1} if args.steps else {}))

        def measure(folder: Path) -> dict:
            recognizer = Recognizer(folder, threads=args.threads)
            recognizer.recognize(timed_lines[:1], batch_size=1, options=options)  # warm-up
            started = time.perf_counter()
            recognizer.recognize(timed_lines, batch_size=1, options=options)
            result = {"seconds": (time.perf_counter() - started) / len(timed_lines), "bytes": bundle_bytes(folder)}
            if rows:
                result["evaluation"] = evaluate(recognizer, rows, beams=4)
            return result

        results = {"fp32": measure(work / "fp32")}
        for name in args.configs.split(","):
            print(f"quantizing: {name}", file=sys.stderr, flush=True)
            quantize_bundle(work / "fp32", work / name, QuantizeSettings(**CONFIGS[name]), calibration, log=lambda m: None)
            results[name] = measure(work / name)

    base = results["fp32"]
    print(f"# quantization: {model}, {args.threads} threads, 4 beams, batch 1, {len(timed_lines)} timed lines"
          + (f", {args.steps} forced steps" if args.steps else "") + (f"; accuracy on {len(rows)} held-out lines" if rows else ""))
    print("| bundle | size MB | size / fp32 | s/line | fp32 / this | CER | CER change, points (95% interval) | identical to fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        accuracy = "| - | - | -"
        if rows:
            ev = r["evaluation"]
            low, high = cer_difference_interval(base["evaluation"], ev, [r[1] for r in rows])
            change = f"{100 * (ev.cer - base['evaluation'].cer):+.2f} ({low:+.2f} to {high:+.2f})"
            accuracy = f"| {100 * ev.cer:.2f}% | {change} | {100 * agreement(base['evaluation'], ev):.1f}%"
        print(f"| {name} | {r['bytes'] / 1e6:.1f} | {r['bytes'] / base['bytes']:.3f} | {r['seconds']:.3f} | {base['seconds'] / r['seconds']:.2f}x {accuracy} |")


if __name__ == "__main__":
    main()
