"""Seconds per line: PyTorch `generate`, Optimum's ORTModelForVision2Seq and htr, on the real TrOCR architectures.

The models are the real trocr-small / trocr-base architectures from ../shared/data/trocr with
random weights. Every side decodes exactly `--steps` tokens per line (min_length = max_length), so
that all do equal work whatever the random weights say. Same images, threads and machine, one run;
ratios are what to compare, absolute times on shared machines are noisy.

    python benchmarks/speed.py --models small,base --steps 32
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny import TROCR, real_architecture  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Return the median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lines(count: int):
    from htr.export.verify import sample_lines

    return sample_lines(count)


def bench_model(name: str, args, work: Path) -> list:
    import torch
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForVision2Seq
    from transformers import AutoImageProcessor, VisionEncoderDecoderModel

    from htr import GenerationOptions, Recognizer
    from htr.export.bundle import export_bundle, load_checkpoint

    folder = real_architecture(f"trocr-{name}-handwritten", work / name / "checkpoint")
    print(f"[{name}] exporting htr bundle", file=sys.stderr, flush=True)
    export_bundle(load_checkpoint(str(folder)), work / name / "fp32", log=lambda m: None)
    bundles = quantized_bundles(work / name, args)
    recognizers = {precision: Recognizer(path, threads=args.threads) for precision, path in bundles.items()}
    print(f"[{name}] exporting Optimum ORT model", file=sys.stderr, flush=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    optimum = ORTModelForVision2Seq.from_pretrained(folder, export=True, session_options=options, provider="CPUExecutionProvider")
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    images = lines(max(args.batches))
    steps = args.steps
    length = steps + 1  # transformers' lengths count the decoder start token

    rows = []
    for beams in args.beams:
        for batch in args.batches:
            subset = images[:batch]
            kwargs = dict(num_beams=beams, min_length=length, max_length=length, do_sample=False, early_stopping=False)

            def run_torch():
                pixels = processor(images=subset, return_tensors="pt").pixel_values
                with torch.no_grad():
                    out = model.generate(pixels, **kwargs)
                assert out.shape[1] == length, out.shape

            def run_optimum():
                pixels = processor(images=subset, return_tensors="pt").pixel_values
                out = optimum.generate(pixels, **kwargs)
                assert out.shape[1] == length, out.shape

            def run_htr(recognizer):
                results = recognizer.recognize(subset, batch_size=batch, options=GenerationOptions(num_beams=beams, min_length=length, max_length=length))
                assert all(len(r.tokens) == steps for r in results)

            row = {"model": f"trocr-{name}", "beams": beams, "batch": batch}
            sides = [("torch", run_torch), ("optimum", run_optimum)]
            sides += [(f"htr {p}", lambda r=r: run_htr(r)) for p, r in recognizers.items()]
            for side, fn in sides:
                row[side] = timed(fn, args.repeats) / batch
                print(f"[{name}] beams {beams} batch {batch} {side}: {row[side]:.3f} s/line", file=sys.stderr, flush=True)
            rows.append(row)
    memory = [{"model": f"trocr-{name}", "precision": p, "bundle_mb": bundle_mb(path), "rss_mb": htr_run_rss(path, images[0], work)}
              for p, path in bundles.items()]
    return rows, memory


def quantized_bundles(folder: Path, args) -> dict:
    """Return precision -> bundle folder: the fp32 bundle and the quantized ones asked for."""
    from htr.evaluate import read_labels
    from htr.export.quantize import QuantizeSettings, quantize_bundle

    modes = {"int8": "static", "dynamic": "dynamic", "fp16": "fp16"}
    calibration = [r[0] for r in read_labels(Path(__file__).resolve().parents[1] / "calibration_data")][: args.calibration_lines]
    bundles = {"fp32": folder / "fp32"}
    for precision in args.precisions:
        if precision != "fp32":
            print(f"[{folder.name}] quantizing: {precision}", file=sys.stderr, flush=True)
            quantize_bundle(folder / "fp32", folder / precision, QuantizeSettings(mode=modes[precision]), calibration, log=lambda m: None)
            bundles[precision] = folder / precision
    return bundles


def bundle_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


def htr_run_rss(bundle: Path, image, work: Path) -> float:
    """Return the peak resident memory (MB) of one `htr-run` process reading one line with this bundle."""
    import subprocess

    path = work / "rss-line.png"
    image.save(path)
    code = ("import resource, subprocess, sys; "
            "subprocess.run([sys.argv[1], '--model', sys.argv[2], '--threads', '2', sys.argv[3]], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    script = str(Path(sys.executable).parent / "htr-run")
    out = subprocess.run([sys.executable, "-c", code, script, str(bundle), str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,base", help="comma-separated: small, base, large")
    parser.add_argument("--steps", type=int, default=32, help="tokens decoded per line by every side")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precisions", default="fp32,int8,dynamic", help="htr bundles to time: fp32, int8 (static), dynamic, fp16")
    parser.add_argument("--calibration-lines", type=int, default=32, help="calibration_data lines for the int8 bundle")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    args.beams = [int(b) for b in args.beams.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = [p for p in args.precisions.split(",") if p]
    if not TROCR.is_dir():
        sys.exit(f"needs the TrOCR configs at {TROCR}")

    import torch
    import onnxruntime
    import transformers

    torch.set_num_threads(args.threads)
    rows, memory = [], []
    with tempfile.TemporaryDirectory(prefix="htr-bench-") as work:
        for name in args.models.split(","):
            model_rows, model_memory = bench_model(name, args, Path(work))
            rows.extend(model_rows)
            memory.extend(model_memory)

    print(f"# speed: {args.steps} decode steps per line, {args.threads} threads, CPUExecutionProvider; htr bundles: {', '.join(args.precisions)}")
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}")
    htr_sides = [f"htr {p}" for p in ["fp32"] + [p for p in args.precisions if p != "fp32"]]
    ratios = [("torch", "htr fp32"), ("optimum", "htr fp32")] + [(a, b) for b in htr_sides[1:] for a in ("htr fp32", "torch")]
    header = ["model", "beams", "batch", "torch", "optimum"] + htr_sides + [f"{a} / {b}" for a, b in ratios]
    print("| " + " | ".join(header) + " |  (s/line; ratios > 1: the second is faster)")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["model"], str(r["beams"]), str(r["batch"])] + [f"{r[k]:.3f}" for k in ["torch", "optimum"] + htr_sides]
        cells += [f"{r[a] / r[b]:.2f}x" for a, b in ratios]
        print("| " + " | ".join(cells) + " |")
    print()
    print("| model | bundle | size MB | peak RSS of htr-run, MB |")
    print("|---|---|---|---|")
    for m in memory:
        print(f"| {m['model']} | {m['precision']} | {m['bundle_mb']:.1f} | {m['rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"speed": rows, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
