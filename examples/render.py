"""Re-render the example lines in this folder and their labels.tsv (needs the fonts of train/fonts.tsv: scripts/install-fonts.sh).

Both are written in fonts of the held-out `eval` split, so the demo model never saw these hands in training.
"""

import random
from pathlib import Path

from htr.train.synth import load_fonts, render_line

EXAMPLES = {
    "line.jpg": ("Breip.ttf", "Meet me at the station on Friday, 3 June."),
    "line-2.jpg": ("Kristi.ttf", "Paid Mr. Lathrop $45.20 for the books"),
}

if __name__ == "__main__":
    fonts = {Path(f.path).name: f.path for f in load_fonts("eval")}
    here = Path(__file__).parent
    for name, (font, text) in EXAMPLES.items():
        render_line(text, fonts[font], random.Random(name)).save(here / name, quality=92)
        print(here / name, text)
    (here / "labels.tsv").write_text("".join(f"{name}\t{text}\n" for name, (_, text) in EXAMPLES.items()), encoding="utf-8")
