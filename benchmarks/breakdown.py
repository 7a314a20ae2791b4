"""Where the errors lie: CER by font and by character class, from the rows `htr-eval --jsonl` writes.

    htr-eval FP32 INT8 DIR --beams 4 --jsonl rows.jsonl
    python benchmarks/breakdown.py rows.jsonl

The font of each line comes from the `sources.tsv` that `python -m htr.train.synth` writes beside its
lines (lines without one count under "?"). A group's CER is its summed edit distance over its summed
reference length, as htr-eval's. With two bundles in the rows, the change (second minus first) has a
95% interval: a paired bootstrap over the group's lines, as htr-eval's. A character class's error is
the share of the reference's characters of that class that an edit-distance alignment substitutes or
drops (an inserted character belongs to no reference character, so it counts in no class).
"""

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

from htr.evaluate import Evaluation, cer_difference_interval, character_error_rate

CLASSES = ("capitals", "lower case", "digits", "punctuation", "spaces")


def character_class(char: str) -> str:
    if char.isupper():
        return "capitals"
    if char.islower():
        return "lower case"
    if char.isdigit():
        return "digits"
    return "spaces" if char.isspace() else "punctuation"


def misread(reference: str, text: str) -> List[bool]:
    """Return, for each character of `reference`, whether a minimal edit-distance alignment with `text`
    substitutes or drops it."""
    n, m = len(reference), len(text)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1, cost[i - 1][j - 1] + (reference[i - 1] != text[j - 1]))
    wrong, i, j = [True] * n, n, m
    while i > 0 and j > 0:  # walk back, preferring the diagonal (match or substitution), then a drop, then an insertion
        if cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != text[j - 1]):
            wrong[i - 1] = reference[i - 1] != text[j - 1]
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return wrong


def fonts_beside(paths: Sequence[str]) -> Dict[str, str]:
    """Return each path's font from the `sources.tsv` in its folder, where there is one."""
    fonts = {}
    for folder in {Path(p).parent for p in paths}:
        sources = folder / "sources.tsv"
        if sources.is_file():
            with open(sources, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    fonts[str(folder / row["path"])] = row["font_file"]
    return fonts


def breakdown(rows: List[dict]) -> str:
    """Return markdown tables: CER by font (with the change and its interval for two bundles) and the share of each
    character class misread, over all lines and by font, per bundle."""
    bundles = len(rows[0]["texts"])
    fonts = fonts_beside([r["path"] for r in rows])
    groups, places = defaultdict(list), []
    for r in rows:
        places.append(("all", fonts.get(r["path"], "?")))
        for place in places[-1]:
            groups[place].append(r)
    names = ["all"] + sorted(k for k in groups if k != "all")
    head = " | ".join(f"bundle {k + 1} CER" for k in range(bundles))
    lines = [f"| lines | count | {head} |" + (" change, points (95%) |" if bundles == 2 else ""),
             "|---|---|" + "---|" * bundles + ("---|" if bundles == 2 else "")]
    for name in names:
        group = groups[name]
        references = [r["reference"] for r in group]
        texts = [[r["texts"][k] for r in group] for k in range(bundles)]
        cers = [character_error_rate([t or "" for t in ts], references) for ts in texts]
        row = f"| {name} | {len(group)} | " + " | ".join(f"{100 * c:.2f}%" for c in cers) + " |"
        if bundles == 2:
            first, second = (Evaluation(ts, c, 0.0, 0.0) for ts, c in zip(texts, cers))
            low, high = cer_difference_interval(first, second, references)
            row += f" {100 * (cers[1] - cers[0]):+.2f} ({low:+.2f} to {high:+.2f}) |"
        lines.append(row)
    counts, wrong = defaultdict(int), [defaultdict(int) for _ in range(bundles)]
    for r, row_places in zip(rows, places):
        for char in r["reference"]:
            for place in row_places:
                counts[place, character_class(char)] += 1
        for k in range(bundles):
            for char, bad in zip(r["reference"], misread(r["reference"], r["texts"][k] or "")):
                for place in row_places:
                    wrong[k][place, character_class(char)] += bad
    lines += ["", "| lines | characters | count | " + " | ".join(f"bundle {k + 1} misread" for k in range(bundles)) + " |",
              "|---|---|---|" + "---|" * bundles]
    for name in names:
        for key in ((name, c) for c in CLASSES if counts[name, c]):
            lines.append(f"| {name} | {key[1]} | {counts[key]} | " + " | ".join(f"{100 * w[key] / counts[key]:.1f}%" for w in wrong) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", type=Path, help="the file `htr-eval --jsonl` wrote")
    args = parser.parse_args(argv)
    try:
        with open(args.rows, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        print(f"breakdown: {args.rows}: cannot read htr-eval --jsonl rows ({e})", file=sys.stderr)
        return 2
    if not rows:
        print(f"breakdown: {args.rows}: holds no rows", file=sys.stderr)
        return 2
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("reference"), str)
                and isinstance(row.get("texts"), list) and len(row["texts"]) == len(rows[0]["texts"]) > 0):
            print(f"breakdown: {args.rows}: row {number} is not an htr-eval --jsonl row (path, reference, and the same "
                  "number of texts as the first row)", file=sys.stderr)
            return 2
    print(breakdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
