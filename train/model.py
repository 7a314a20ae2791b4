"""Models and tokenizers to train: the demo TrOCR architecture and character tokenizers for any alphabet."""

import string
from typing import Optional

# Printable ASCII: what the synthetic English lines and most Latin-script archives need.
ENGLISH = string.ascii_letters + string.digits + string.punctuation + " "
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3: bos, pad, eos (also the decoder start), unk


def char_tokenizer(alphabet: str):
    """Return a fast tokenizer with one token per character of `alphabet` (transformers' PreTrainedTokenizerFast)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({c: len(SPECIALS) + i for i, c in enumerate(chars)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False, model_max_length=256,
    )


def demo_model(vocab_size: int, height: int = 32, width: int = 384):
    """Return a fresh TrOCR-architecture model sized for shipping: ViT encoder + TrOCR decoder (about 8M parameters).

    Patches are the line's full height and 8 pixels wide: 48 columns across a 32x384 line, finer
    than one per character of a long line (square 16x16 patches give only 24 columns). Against
    16x8 patches (96 tokens) this trains 1.6x faster on a 2-core CPU (47 against 30 lines/s,
    with the CTC head) for the same depth.
    """
    from transformers import TrOCRConfig, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    encoder = ViTConfig(
        image_size=[height, width], patch_size=[height, 8], hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
        intermediate_size=1024, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    decoder = TrOCRConfig(
        vocab_size=vocab_size, d_model=256, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=1024,
        max_position_embeddings=256, activation_function="gelu", layernorm_embedding=True, scale_embedding=True,
        use_learned_position_embeddings=True, dropout=0.1, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        decoder_start_token_id=2,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 1, 2
    return VisionEncoderDecoderModel(config)


def model_from_config(source: str):
    """Return `(model, image_processor, tokenizer)` for training from scratch: a VisionEncoderDecoder model of the
    architecture in `source`'s config (a hub id or a folder; any weights there are not loaded) with fresh weights,
    and `source`'s own image processor and tokenizer."""
    from transformers import AutoConfig, VisionEncoderDecoderModel

    from htr.errors import HtrError
    from htr.export.bundle import load_processors

    try:
        config = AutoConfig.from_pretrained(source)
        image_processor, tokenizer = load_processors(source)
    except (OSError, ValueError) as e:
        raise HtrError(f"cannot load the config, image processor and tokenizer of {source}: {e}") from e
    if config.model_type != "vision-encoder-decoder":
        raise HtrError(f"{source}: config.json describes a {config.model_type!r} model, not a vision-encoder-decoder one")
    return VisionEncoderDecoderModel(config), image_processor, tokenizer


def demo_image_processor(height: int = 32, width: int = 384):
    """Return the demo model's preprocessing: a plain resize (bilinear), rescale and normalise, as ViTImageProcessor does."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": height, "width": width}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def swap_tokenizer(model, tokenizer, eos_id: Optional[int] = None) -> None:
    """Give `model` a new vocabulary: the decoder's embeddings and output layer are re-initialised, the encoder kept."""
    import torch

    decoder = model.decoder
    size = len(tokenizer)
    decoder.resize_token_embeddings(size)
    std = decoder.config.init_std
    with torch.no_grad():
        decoder.get_input_embeddings().weight.normal_(0.0, std)
        if decoder.get_output_embeddings() is not decoder.get_input_embeddings():
            decoder.get_output_embeddings().weight.normal_(0.0, std)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.eos_token_id if eos_id is None else eos_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
    model.config.decoder.vocab_size = size


def resize_input(model, image_processor, height: int, width: int):
    """Return a copy of `model` for `height` x `width` input images, and set `image_processor` to resize to that size.

    The encoder keeps its grid of patches: each patch is scaled with the image, and the patch embedding's
    kernel is resampled so that it reads a resized patch as it read the original (the pseudo-inverse of a
    bilinear resize, as FlexiViT does). Along a side one patch spans (the height of the demo model's
    full-height patches) this is exact for an image resized from the old size; across several patches,
    nearly so (resizing the whole image mixes pixels across patch borders). A model made taller this way
    starts out reading about as well as before, and training can then use the finer detail. ViT and DeiT
    encoders only.
    """
    import copy

    import torch

    from htr.errors import HtrError
    from htr.export.bundle import image_and_patch_size

    encoder = model.config.encoder
    projection = getattr(getattr(getattr(model.encoder, "embeddings", None), "patch_embeddings", None), "projection", None)
    if projection is None:
        raise HtrError(f"cannot resize the input of a {encoder.model_type!r} encoder: only ViT and DeiT encoders have a patch embedding to resample")
    old_size, old_patch = image_and_patch_size(encoder)
    patch = []
    for new, old, side in zip((height, width), old_size, old_patch):
        if new * side % old:
            raise HtrError(f"cannot resize the input from {old_size[0]}x{old_size[1]} to {height}x{width}: "
                           f"a {old_patch[0]}x{old_patch[1]} patch would not scale to whole pixels")
        patch.append(new * side // old)
    kernel = projection.weight.detach()
    # row i of resize: old basis patch i resized; (x @ resize) . k' = x . k for every old patch x when resize k' = k
    basis = torch.eye(old_patch[0] * old_patch[1], dtype=torch.float64).reshape(-1, 1, *old_patch)
    resize = torch.nn.functional.interpolate(basis, size=tuple(patch), mode="bilinear", align_corners=False).reshape(len(basis), -1)
    flat = kernel.reshape(-1, len(basis)).to(torch.float64)
    new_kernel = (flat @ torch.linalg.pinv(resize).T).reshape(*kernel.shape[:2], *patch).to(kernel.dtype)

    config = copy.deepcopy(model.config)  # `model` stays as it was
    config.encoder.image_size, config.encoder.patch_size = [height, width], patch
    state = model.state_dict()
    state["encoder.embeddings.patch_embeddings.projection.weight"] = new_kernel
    resized = _rebuilt(model, config, state)
    image_processor.size = {"height": height, "width": width}
    return resized


def _rebuilt(model, config, state: dict):
    """Return a new VisionEncoderDecoderModel of `config` holding `state`, with `model`'s generation config."""
    from transformers import VisionEncoderDecoderModel

    rebuilt = VisionEncoderDecoderModel(config)
    rebuilt.load_state_dict(state)
    rebuilt.generation_config = model.generation_config
    return rebuilt


# Config fields that set dropout on hidden states and attention weights: ViT, DeiT, BEiT, Swin and BERT-style
# (`*_prob`), TrOCR and BART-style (`dropout`, `attention_dropout`), GPT-2-style (`*_pdrop`).
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def with_dropout(model, probability: float):
    """Return a copy of `model` whose encoder and decoder drop hidden states and attention weights with `probability`
    while training (a regulariser: against fitting the few hands of a small data set). Weights are unchanged; an
    encoder or decoder whose config has none of `DROPOUT_FIELDS` is refused."""
    import copy

    from htr.errors import HtrError

    config = copy.deepcopy(model.config)  # `model` stays as it was
    for side in (config.encoder, config.decoder):
        fields = [name for name in DROPOUT_FIELDS if hasattr(side, name)]
        if not fields:
            raise HtrError(f"cannot set dropout in a {side.model_type!r} model: its config has none of {', '.join(DROPOUT_FIELDS)}")
        for name in fields:
            setattr(side, name, probability)
    return _rebuilt(model, config, model.state_dict())
