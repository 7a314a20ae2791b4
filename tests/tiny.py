"""Small random VisionEncoderDecoder checkpoints for tests and benchmarks: built here, never downloaded."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TROCR = SHARED / "trocr"
LINES = SHARED / "lines"

needs_shared = pytest.mark.skipif(
    not TROCR.is_dir(), reason=f"needs the shared TrOCR configs and tokenizers at {TROCR} (absent on a fresh clone)"
)


@dataclass(frozen=True)
class Variant:
    """One architecture variant of the TrOCR family, small enough to export in seconds."""

    encoder: str = "vit"  # vit (1 extra token) or deit (2)
    image_size: Tuple[int, int] = (32, 32)
    vocab: int = 64
    learned_positions: bool = True
    layernorm_embedding: bool = True
    scale_embedding: bool = False
    tie_embeddings: bool = False
    activation: str = "gelu"
    tokenizer: str = "trocr-base-handwritten"  # whose tokenizer (and image processor family) to use
    resample: int = 2  # PIL bilinear; 3 is bicubic
    eos_boost: float = 3.0  # scales the eos row of the output layer so that sequences end at varied lengths
    boost_last: int = 0  # this many last rows (e.g. the ids past the tokenizer's vocabulary) ...
    last_boost: float = 1.0  # ... are scaled by this, so that they are chosen now and then
    init_std: float = 0.25  # a large init makes the choices decisive: float noise cannot flip them
    seed: int = 0


def build_model(variant: Variant):
    """Return a random, decisive VisionEncoderDecoderModel for `variant`, in eval mode."""
    import torch
    from transformers import DeiTConfig, TrOCRConfig, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    torch.manual_seed(variant.seed)
    encoder_cls = DeiTConfig if variant.encoder == "deit" else ViTConfig
    encoder = encoder_cls(
        image_size=list(variant.image_size),
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=variant.init_std,
    )
    decoder = TrOCRConfig(
        vocab_size=variant.vocab,
        d_model=32,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        activation_function=variant.activation,
        layernorm_embedding=variant.layernorm_embedding,
        scale_embedding=variant.scale_embedding,
        use_learned_position_embeddings=variant.learned_positions,
        tie_word_embeddings=variant.tie_embeddings,
        init_std=variant.init_std,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 2
    config.pad_token_id = 1
    config.eos_token_id = 2
    model = VisionEncoderDecoderModel(config).eval()
    with torch.no_grad():
        model.decoder.output_projection.weight[2] *= variant.eos_boost
        if variant.boost_last:
            model.decoder.output_projection.weight[-variant.boost_last :] *= variant.last_boost
    return model


def save_checkpoint(variant: Variant, folder: Path, generation: Optional[dict] = None) -> Path:
    """Save model, image processor and tokenizer of `variant` as a `from_pretrained` folder."""
    from transformers import AutoTokenizer, DeiTImageProcessor, ViTImageProcessor

    model = build_model(variant)
    for key, value in (generation or {}).items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder)
    processor_cls = DeiTImageProcessor if variant.encoder == "deit" else ViTImageProcessor
    height, width = variant.image_size
    size = {"height": height, "width": width}
    processor_cls(size=size, resample=variant.resample, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_center_crop=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TROCR / variant.tokenizer, use_fast=True).save_pretrained(folder)
    return Path(folder)


def real_architecture(name: str, folder: Path, seed: int = 0) -> Path:
    """Save the real `microsoft/<name>` architecture with random weights, its processor and tokenizer."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_pretrained(TROCR / name)).eval()
    model.save_pretrained(folder)
    AutoImageProcessor.from_pretrained(TROCR / name).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TROCR / name, use_fast=True).save_pretrained(folder)
    return Path(folder)
