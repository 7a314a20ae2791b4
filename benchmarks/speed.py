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
    export_bundle(load_checkpoint(str(folder)), work / name / "bundle", log=lambda m: None)
    htr = Recognizer(work / name / "bundle", threads=args.threads)
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

            def run_htr():
                results = htr.recognize(subset, batch_size=batch, options=GenerationOptions(num_beams=beams, min_length=length, max_length=length))
                assert all(len(r.tokens) == steps for r in results)

            row = {"model": f"trocr-{name}", "beams": beams, "batch": batch}
            for side, fn in (("torch", run_torch), ("optimum", run_optimum), ("htr", run_htr)):
                row[side] = timed(fn, args.repeats) / batch
                print(f"[{name}] beams {beams} batch {batch} {side}: {row[side]:.3f} s/line", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,base", help="comma-separated: small, base, large")
    parser.add_argument("--steps", type=int, default=32, help="tokens decoded per line by every side")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    args.beams = [int(b) for b in args.beams.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    if not TROCR.is_dir():
        sys.exit(f"needs the TrOCR configs at {TROCR}")

    import torch
    import onnxruntime
    import transformers

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="htr-bench-") as work:
        for name in args.models.split(","):
            rows.extend(bench_model(name, args, Path(work)))

    print(f"# speed: {args.steps} decode steps per line, {args.threads} threads, CPUExecutionProvider, fp32")
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}")
    print("| model | beams | batch | torch s/line | optimum s/line | htr s/line | torch / htr | optimum / htr |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['beams']} | {r['batch']} | {r['torch']:.3f} | {r['optimum']:.3f} | {r['htr']:.3f} | "
              f"{r['torch'] / r['htr']:.2f}x | {r['optimum'] / r['htr']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
