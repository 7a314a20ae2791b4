"""Line detection on synthetic pages: precision and recall at IoU >= 0.5, and reading order.

Pages come from `htr.train.synth.render_page` in the held-out (`eval`) fonts: 3-14 lines, random
margins and spacing, uneven paper, noise specks, ruled paper on some, rotated by up to +-5 degrees.
Each line's true outline is its text box rotated with the page.

    python benchmarks/pages.py --pages 100
    python benchmarks/pages.py --pages 40 --line-tilt 1.5   # each line drifting by its own angle
    python benchmarks/pages.py --pages 100 --columns 2 --heading   # two columns under a heading
    python benchmarks/pages.py --pages 30 --model BUNDLE   # also page CER against line CER
    python benchmarks/pages.py --real ../shared/data/lines/stanford-memorials-1905   # real handwriting

With `--real DIR` the pages are real ones instead: the line images of DIR whose `provenance.tsv`
gives their source page and box there are put back at their places (each page that has 3 or more of
them, at the scale of its lines, on paper of their tone; lines not in DIR are missing from it), and
a line's true outline is its box. This measures finding real handwritten lines (their slant,
spacing, ascenders and descenders, as written) rather than synthetic ones.

With `--model`, each page is read whole (`Recognizer.read_page`) and its text compared with the true
lines joined by newlines (page CER); the same model also reads the true line boxes, cut upright
from the page (line CER), so the difference is what finding the lines costs.
"""

import argparse
import random
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fonts", choices=["train", "eval"], default="eval")
    parser.add_argument("--model", help="bundle: also measure page CER and line CER")
    parser.add_argument("--spacing", default="1.5,2.3", help="range of line spacing in font sizes; 1.1,1.35 makes lines touch")
    parser.add_argument("--line-tilt", type=float, default=0.0, help="turn each line by its own angle, up to this many degrees either way")
    parser.add_argument("--columns", type=int, default=1, help="lines in this many columns, read column by column")
    parser.add_argument("--heading", action="store_true", help="a line across the page above the columns, read first")
    parser.add_argument("--real", metavar="DIR", help="pages put back together from the real line images of DIR (labels.tsv, provenance.tsv)")
    args = parser.parse_args()

    from htr.evaluate import line_detection_scores
    from htr.page import analyse
    from htr.train.synth import load_fonts, render_page

    from htr.evaluate import character_error_rate

    recognizer = None
    if args.model:
        from htr import Recognizer

        recognizer = Recognizer(args.model)
    page_hyp, page_ref, line_hyp, line_ref = [], [], [], []
    if args.real:
        pages = real_pages(args.real)
        args.pages = len(pages)
    else:
        fonts = load_fonts(args.fonts)
        spacing = tuple(float(x) for x in args.spacing.split(","))
        pages = (render_page(fonts, random.Random(f"page:{args.seed}:{index}"), spacing=spacing, line_tilt=args.line_tilt,
                             columns=args.columns, heading=args.heading) for index in range(args.pages))
    found = true = matched = ordered = 0
    seconds = 0.0
    for page in pages:
        started = time.perf_counter()
        layout = analyse(page.image)
        seconds += time.perf_counter() - started
        scores = line_detection_scores([line.polygon for line in layout.lines], page.polygons, page.image.size)
        found += len(layout.lines)
        true += len(page.polygons)
        matched += len(scores["matches"])
        ordered += scores["in_order"]
        if recognizer is not None:
            page_hyp.append(recognizer.read_page(page.image, layout=layout).text)
            page_ref.append("\n".join(page.texts))
            line_hyp.extend(r.text for r in recognizer.recognize(true_line_crops(page)))
            line_ref.extend(page.texts)
    if args.real:
        print(f"# line detection: {args.pages} real pages put back together from the lines of {args.real}, IoU >= 0.5")
    else:
        print(f"# line detection: {args.pages} synthetic pages in {args.fonts} fonts (seed {args.seed}), line spacing {args.spacing} font sizes, "
              f"lines tilted up to {args.line_tilt} degrees, {args.columns} column(s){' under a heading' if args.heading else ''}, IoU >= 0.5")
    print("| pages | true lines | found lines | precision | recall | pages in reading order | s/page |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.pages} | {true} | {found} | {matched / max(found, 1):.3f} | {matched / max(true, 1):.3f} | "
          f"{ordered / args.pages:.3f} | {seconds / args.pages:.2f} |")
    if recognizer is not None:
        print(f"\npage CER {100 * character_error_rate(page_hyp, page_ref):.2f}% (pages read whole); "
              f"line CER {100 * character_error_rate(line_hyp, line_ref):.2f}% (true line boxes), {args.model}")


def real_pages(folder, least: int = 3, margin: int = 60):
    """Return the pages that `folder`'s line images come from, each with 3 or more of its lines put back in place."""
    import csv
    import re
    from collections import defaultdict
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from htr.evaluate import read_labels
    from htr.train.synth import PageSample

    folder = Path(folder)
    texts = dict(read_labels(folder))  # image path (under folder) -> transcription
    by_page = defaultdict(list)
    with open(folder / "provenance.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            box = [int(v) for v in row["bbox_x0,y0,x1,y1_in_source_page"].split(",")]
            number = int(re.search(r"_l(\d+)\.png$", row["file"]).group(1))  # the line's place on its page
            by_page[row["source_alto"]].append((number, row["file"], box))
    pages = []
    for source in sorted(by_page):
        lines = sorted(by_page[source])
        if len(lines) < least:
            continue
        images = [Image.open(folder / name).convert("L") for _, name, _ in lines]
        scale = float(np.median([image.height / (box[3] - box[1]) for image, (_, _, box) in zip(images, lines)]))
        left, top = min(box[0] for _, _, box in lines), min(box[1] for _, _, box in lines)
        place = [tuple(round((v - o) * scale) + margin for v, o in zip(box, (left, top, left, top))) for _, _, box in lines]
        width, height = max(p[2] for p in place) + margin, max(p[3] for p in place) + margin
        grey = [np.asarray(image) for image in images]
        paper = float(np.median([np.median(pixels[pixels < 255]) for pixels in grey]))
        page = np.full((height, width), paper, dtype=np.float32)
        page += np.random.default_rng(len(pages)).normal(0, 2.0, page.shape).astype(np.float32)
        for image, (x0, y0, x1, y1) in zip(images, place):
            pixels = np.asarray(image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), dtype=np.float32)
            written = pixels < 250  # outside its polygon the line image is white: the page shows there
            region = page[y0:y1, x0:x1]
            region[written] = np.minimum(region[written], pixels[written])
        polygons = [((x0, y0), (x1, y0), (x1, y1), (x0, y1)) for x0, y0, x1, y1 in place]
        image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8), "L").convert("RGB")
        pages.append(PageSample(image, [texts[str(folder / name)] for _, name, _ in lines], polygons, 0.0))
    return pages


def true_line_crops(page):
    """Return the true lines of a synthetic page cut from the upright page, with the margin htr.page gives found lines."""
    from PIL import Image

    from htr.page import LINE_MARGIN_X, LINE_MARGIN_Y, unrotate

    upright = page.image.rotate(-page.skew, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    centre = (page.image.width / 2.0, page.image.height / 2.0)
    crops = []
    for polygon in page.polygons:
        points = [unrotate(x, y, page.skew, centre) for x, y in polygon]  # into the frame rotated by -skew
        left, top = min(p[0] for p in points), min(p[1] for p in points)
        right, bottom = max(p[0] for p in points), max(p[1] for p in points)
        pad_y, pad_x = LINE_MARGIN_Y * (bottom - top), LINE_MARGIN_X * (bottom - top)
        crops.append(upright.crop((int(left - pad_x), int(top - pad_y), int(right + pad_x), int(bottom + pad_y))))
    return crops


if __name__ == "__main__":
    main()
