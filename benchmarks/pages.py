"""Line detection on synthetic pages: precision and recall at IoU >= 0.5, and reading order.

Pages come from `htr.train.synth.render_page` in the held-out (`eval`) fonts: 3-14 lines, random
margins and spacing, uneven paper, noise specks, ruled paper on some, rotated by up to +-5 degrees.
Each line's true outline is its text box rotated with the page.

    python benchmarks/pages.py --pages 100
"""

import argparse
import random
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fonts", choices=["train", "eval"], default="eval")
    parser.add_argument("--spacing", default="1.5,2.3", help="range of line spacing in font sizes; 1.1,1.35 makes lines touch")
    args = parser.parse_args()

    from htr.evaluate import line_detection_scores
    from htr.page import analyse
    from htr.train.synth import load_fonts, render_page

    fonts = load_fonts(args.fonts)
    spacing = tuple(float(x) for x in args.spacing.split(","))
    found = true = matched = ordered = 0
    seconds = 0.0
    for index in range(args.pages):
        page = render_page(fonts, random.Random(f"page:{args.seed}:{index}"), spacing=spacing)
        started = time.perf_counter()
        layout = analyse(page.image)
        seconds += time.perf_counter() - started
        scores = line_detection_scores([line.polygon for line in layout.lines], page.polygons, page.image.size)
        found += len(layout.lines)
        true += len(page.polygons)
        matched += len(scores["matches"])
        ordered += scores["in_order"]
    print(f"# line detection: {args.pages} synthetic pages in {args.fonts} fonts (seed {args.seed}), line spacing {args.spacing} font sizes, IoU >= 0.5")
    print("| pages | true lines | found lines | precision | recall | pages in reading order | s/page |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.pages} | {true} | {found} | {matched / max(found, 1):.3f} | {matched / max(true, 1):.3f} | "
          f"{ordered / args.pages:.3f} | {seconds / args.pages:.2f} |")


if __name__ == "__main__":
    main()
