"""Tiny random-weight diffusers pipelines, built offline from configs in code.

Used by the test suite, the benchmarks and the examples: model hubs cannot be reached in CI, so
we build miniature versions of the real architectures, save them with ``save_pretrained`` and let
callers load them back through the real ``from_pretrained`` path. The weights are random, so
images are noise-like; the geometry (x8 VAE, latent channels, text-encoder plumbing) is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# A character-level vocabulary: transformers ships no tokenizer files and the hub is unreachable.
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-")


def write_clip_tokenizer(folder: Path) -> Path:
    """Write a character-level CLIP BPE tokenizer (vocab.json + merges.txt) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for ch in _CHARS:
        if ch == " ":
            continue
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>"
    )
    tok.save_pretrained(folder)
    return folder


def clip_vocab_size() -> int:
    return 2 * (len(_CHARS) - 1) + 2


def _clip_text_encoder(hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=clip_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=clip_vocab_size() - 2,
        eos_token_id=clip_vocab_size() - 1,
        pad_token_id=clip_vocab_size() - 1,
    )
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return model.eval()


def tiny_vae(seed: int = 0, latent_channels: int = 4):
    """A 4-level AutoencoderKL: the real x8 latent geometry with a few thousand weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    ).eval()


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_tiny_sd(path: str | Path, seed: int = 0, scheduler: str = "euler") -> Path:
    """Save a tiny Stable Diffusion 1.x/2.x-style text-to-image pipeline to ``path``."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=_clip_text_encoder(32, seed=seed),
        tokenizer=_tokenizer(path.parent / f".tok-{path.name}"),
        unet=unet,
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_sdxl(path: str | Path, seed: int = 0, scheduler: str = "euler", refiner: bool = False) -> Path:
    """Save a tiny SDXL base (two text encoders) or refiner (second encoder only) pipeline."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    path = Path(path)
    torch.manual_seed(seed)
    # Base conditions on both encoders (32 + 32 = 64); the refiner only on the second (32) plus the
    # aesthetic score, which changes the size of its time embedding input.
    cross = 32 if refiner else 64
    time_dims = 8 * (5 if refiner else 6) + 32
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=time_dims,
        cross_attention_dim=cross,
        norm_num_groups=16,
    ).eval()
    tok_dir = path.parent / f".tok-{path.name}"
    enc2 = _clip_text_encoder(32, projection=True, seed=seed + 1)
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=tiny_vae(seed),
            text_encoder=None,
            text_encoder_2=enc2,
            tokenizer=None,
            tokenizer_2=_tokenizer(tok_dir),
            unet=unet,
            scheduler=make_scheduler(scheduler),
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            vae=tiny_vae(seed),
            text_encoder=_clip_text_encoder(32, seed=seed),
            text_encoder_2=enc2,
            tokenizer=_tokenizer(tok_dir),
            tokenizer_2=_tokenizer(tok_dir),
            unet=unet,
            scheduler=make_scheduler(scheduler),
        )
    pipe.save_pretrained(path)
    return path


def make_scheduler(name: str = "euler"):
    """A scheduler with SD's training schedule, by short name (euler, ddim, dpm++, heun)."""
    import diffusers

    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    table = {
        "euler": ("EulerDiscreteScheduler", {}),
        "euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
        "dpm++": ("DPMSolverMultistepScheduler", {}),
        "heun": ("HeunDiscreteScheduler", {}),
        "lms": ("LMSDiscreteScheduler", {}),
    }
    cls_name, extra = table[name]
    return getattr(diffusers, cls_name)(**common, **extra)


def sample_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colourful test picture (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    chans = [
        127.5 + 100 * np.sin(xx / max(width, 1) * 6.0 + phases[c]) * np.cos(yy / max(height, 1) * 4.0 + phases[c])
        for c in range(3)
    ]
    arr = np.stack(chans, axis=-1)
    arr += rng.normal(0, 8, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def gradient_map(width: int, height: int) -> Image.Image:
    """Left (0, keep) to right (255, change) greyscale ramp."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    return Image.fromarray(np.tile(np.round(ramp).astype(np.uint8), (height, 1)), "L")
