"""Tiny random-weight video-to-video pipelines, built offline from configs in code, and test clips.

The video counterpart of :mod:`diffdiff.testing`: miniature Wan 2.x (WanTransformer3DModel,
AutoencoderKLWan with Wan's real 4x temporal / 8x spatial compression, a UMT5 encoder with a
hand-built tokenizer), CogVideoX (its 3-D VAE and DiT, a T5 encoder) and AnimateDiff (a tiny SD UNet with a motion adapter, the tiny x8 VAE) saved with ``save_pretrained`` so callers load them back through the
real ``from_pretrained`` path. Weights are random; the latent geometry is the real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .testing import clip_vocab_size, make_scheduler, tiny_vae, write_clip_tokenizer

# A character-level vocabulary: no tokenizer files ship offline.
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-")


def _t5_tokenizer(max_length: int = 512):
    """A unigram T5 tokenizer over characters (no tokenizer files ship offline)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + ch if ch != " " else "\u2581", -1.0) for ch in _CHARS]
    pieces += [(ch, -2.0) for ch in _CHARS if ch != " "]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _t5_config(config_class: type, vocab: int, d_model: int) -> object:
    return config_class(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
        dropout_rate=0.0, relative_attention_num_buckets=8, is_encoder_decoder=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def _umt5_parts(d_model: int = 32, seed: int = 0):
    """A tiny UMT5 encoder (Wan's text encoder) and the character tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    tok = _t5_tokenizer()
    torch.manual_seed(seed)
    return tok, UMT5EncoderModel(_t5_config(UMT5Config, len(tok), d_model)).eval()


def _t5_parts(d_model: int = 32, seed: int = 0):
    """A tiny T5 encoder (CogVideoX's text encoder) and the character tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tok = _t5_tokenizer(226)
    torch.manual_seed(seed)
    return tok, T5EncoderModel(_t5_config(T5Config, len(tok), d_model)).eval()


def wan_scheduler(name: str = "unipc"):
    """Wan's schedulers: UniPC with flow sigmas (its default, ``add_noise``) or flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    if name == "flow":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    raise ValueError(f"unknown Wan scheduler {name!r} (unipc, flow)")


def build_tiny_wan(path: str | Path, seed: int = 0, scheduler: str = "unipc") -> Path:
    """Save a tiny Wan 2.x video-to-video pipeline (about 0.5 MB) to ``path``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVideoToVideoPipeline

    path = Path(path)
    tok, text_encoder = _umt5_parts(32, seed + 1)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    ).eval()
    pipe = WanVideoToVideoPipeline(tokenizer=tok, text_encoder=text_encoder, transformer=transformer, vae=vae,
                                   scheduler=wan_scheduler(scheduler))
    pipe.save_pretrained(path)
    return path


def build_tiny_cogvideox(path: str | Path, seed: int = 0, scheduler: str = "ddim") -> Path:
    """Save a tiny CogVideoX video-to-video pipeline (3-D causal VAE with 4x time, x8 space) to ``path``."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXTransformer3DModel,
        CogVideoXVideoToVideoPipeline,
    )

    path = Path(path)
    tok, text_encoder = _t5_parts(32, seed + 1)
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4).eval()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=226,
    ).eval()
    sched = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}[scheduler]()
    pipe = CogVideoXVideoToVideoPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                         scheduler=sched)
    pipe.save_pretrained(path)
    return path


def _clip_parts(folder: Path, hidden: int = 32, seed: int = 0):
    """A tiny CLIP text encoder and the character-level tokenizer of :mod:`diffdiff.testing`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_clip_tokenizer(folder)
    vocab = clip_vocab_size()
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return CLIPTokenizer.from_pretrained(folder), CLIPTextModel(cfg).eval()


def build_tiny_animatediff(path: str | Path, seed: int = 0, scheduler: str = "ddim") -> Path:
    """Save a tiny AnimateDiff video-to-video pipeline (SD-style UNet + motion adapter) to ``path``."""
    from diffusers import AnimateDiffVideoToVideoPipeline, MotionAdapter, UNet2DConditionModel

    path = Path(path)
    tok, text_encoder = _clip_parts(path.parent / f".tok-{path.name}", 32, seed + 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    ).eval()
    motion = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                           motion_num_attention_heads=2, motion_max_seq_length=32)
    pipe = AnimateDiffVideoToVideoPipeline(vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                           motion_adapter=motion, scheduler=make_scheduler(scheduler))
    pipe.save_pretrained(path)
    return path


def sample_clip(frames: int = 5, width: int = 48, height: int = 32, seed: int = 0) -> list[Image.Image]:
    """A smooth moving test pattern (deterministic): a colour field drifting right frame by frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    out = []
    for k in range(frames):
        chans = [127.5 + 100 * np.sin((xx - 2 * k) / width * 6.0 + phases[c]) * np.cos(yy / height * 4.0 + phases[c])
                 for c in range(3)]
        arr = np.stack(chans, axis=-1) + rng.normal(0, 6, size=(height, width, 3))
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))
    return out


def half_map(width: int, height: int, right: bool = True) -> Image.Image:
    """Black on one half, white on the other (white = change on the right by default)."""
    arr = np.zeros((height, width), dtype=np.uint8)
    if right:
        arr[:, width // 2:] = 255
    else:
        arr[:, : width // 2] = 255
    return Image.fromarray(arr, "L")
