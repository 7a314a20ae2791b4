import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import TROCR, Variant, save_checkpoint  # noqa: E402

# Variants that together cover the TrOCR family: ViT and DeiT encoders, learned and sinusoidal
# positions, layernorm_embedding on/off, scaled embeddings, tied and untied output layers, relu and
# gelu, bilinear and bicubic resizing, non-square inputs, both tokenizer families, and a model
# vocabulary larger than its tokenizer's (64044 logits for 64002 XLM-R ids, as in trocr-small).
VARIANTS = {
    "vit-roberta": Variant(),
    "deit-xlmr": Variant(
        encoder="deit",
        vocab=64044,
        learned_positions=False,
        layernorm_embedding=False,
        scale_embedding=True,
        tie_embeddings=True,
        activation="relu",
        tokenizer="trocr-small-handwritten",
        resample=3,
        eos_boost=8.0,
        boost_last=42,
        last_boost=1.6,
        seed=1,
    ),
    "wide-lines": Variant(image_size=(16, 64), learned_positions=True, scale_embedding=True, activation="relu", seed=2),
}


def line_images(count: int, seed: int = 0, size=(40, 120)):
    """Return `count` distinct random uint8 RGB arrays shaped like text lines."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size[0] + 3 * i, size[1] + 5 * i, 3), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export each tiny variant once per session; returns name -> (checkpoint folder, bundle folder)."""
    if not TROCR.is_dir():
        pytest.skip(f"needs the shared TrOCR tokenizers at {TROCR} (absent on a fresh clone)")
    from htr.export.bundle import export_bundle, load_checkpoint

    cache = {}

    def get(name: str):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            folder = save_checkpoint(VARIANTS[name], root / "checkpoint")
            export_bundle(load_checkpoint(str(folder)), root / "bundle", log=lambda m: None)
            cache[name] = (folder, root / "bundle")
        return cache[name]

    return get
