"""Tiny random-weight diffusers pipelines, built offline from configs in code.

Used by the test suite, the benchmarks and the examples: model hubs cannot be reached in CI, so
we build miniature versions of the real architectures, save them with ``save_pretrained`` and let
callers load them back through the real ``from_pretrained`` path. The weights are random, so
images are noise-like; the geometry (x8 VAE, latent channels, text-encoder plumbing) is real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _save_sd(path: Path, unet: Any, seed: int, scheduler: str) -> Path:
    from diffusers import StableDiffusionPipeline

    """A tiny SD pipeline around ``unet`` (tiny VAE, CLIP and tokenizer), saved with ``save_pretrained``."""
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


def build_tiny_sd(path: str | Path, seed: int = 0, scheduler: str = "euler") -> Path:
    """Save a tiny Stable Diffusion 1.x/2.x-style text-to-image pipeline to ``path``."""
    from diffusers import UNet2DConditionModel

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
    return _save_sd(path, unet, seed, scheduler)


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


# --- more model families (issue #3) --------------------------------------------------------------

def _t5_parts(folder: Path, d_model: int = 32, seed: int = 0):
    """A tiny T5 encoder and a hand-built unigram tokenizer (no tokenizer files ship offline)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + ch if ch != " " else "\u2581", -1.0) for ch in _CHARS]
    pieces += [(ch, -2.0) for ch in _CHARS if ch != " "]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
        dropout_rate=0.0, relative_attention_num_buckets=8, is_encoder_decoder=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return tok, T5EncoderModel(cfg).eval()


def _flow_vae(seed: int):
    """16-channel VAE with SD3/Flux's latent shift and scale (their pipelines require shift_factor)."""
    vae = tiny_vae(seed, latent_channels=16)
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5305)
    return vae


def build_tiny_sd3(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny Stable Diffusion 3 pipeline (MMDiT, flow matching, CLIP-L + CLIP-G + T5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    path = Path(path)
    tok_dir = path.parent / f".tok-{path.name}"
    t5_tok, t5 = _t5_parts(tok_dir / "t5", d_model=32, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=32,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(seed),
        text_encoder=_clip_text_encoder(32, projection=True, seed=seed),
        tokenizer=_tokenizer(tok_dir / "clip"),
        text_encoder_2=_clip_text_encoder(32, projection=True, seed=seed + 1),
        tokenizer_2=_tokenizer(tok_dir / "clip"),
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_flux(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny Flux.1 pipeline (packed 2x2 latents, flow matching, CLIP + T5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    path = Path(path)
    tok_dir = path.parent / f".tok-{path.name}"
    t5_tok, t5 = _t5_parts(tok_dir / "t5", d_model=32, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(2, 2, 4),
    ).eval()
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                  max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
        vae=_flow_vae(seed),
        text_encoder=_clip_text_encoder(32, projection=False, seed=seed),
        tokenizer=_tokenizer(tok_dir / "clip"),
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_kandinsky22(decoder_path: str | Path, prior_path: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny Kandinsky 2.2 prior (text -> image embedding) and decoder (MoVQ latents)."""
    from diffusers import (
        DDPMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    decoder_path, prior_path = Path(decoder_path), Path(prior_path)
    embed = 32
    torch.manual_seed(seed)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=16, embedding_dim=embed, num_layers=1,
    ).eval()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=embed, image_size=32, projection_dim=embed, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=1, patch_size=8,
    )).eval()
    prior_pipe = KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=vision,
        text_encoder=_clip_text_encoder(embed, projection=True, seed=seed),
        tokenizer=_tokenizer(prior_path.parent / f".tok-{prior_path.name}"),
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                  clip_sample=True, clip_sample_range=10.0),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
    )
    prior_pipe.save_pretrained(prior_path)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=8, norm_num_groups=16,
        addition_embed_type="image", encoder_hid_dim=embed, encoder_hid_dim_type="image_proj",
        cross_attention_dim=32, class_embed_type=None,
    ).eval()
    movq = VQModel(
        block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"), in_channels=3, out_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, norm_type="spatial", num_vq_embeddings=16,
        vq_embed_dim=4,
    ).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, variance_type="learned_range", thresholding=False)
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(decoder_path)
    return decoder_path, prior_path


def _if_unet(in_channels: int, sample_size: int, superres: bool, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra: dict = {}
    if superres:
        extra = dict(class_embed_type="timestep")  # the noise level of the low-res condition
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=6, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=16, encoder_hid_dim=32, addition_embed_type="text", addition_embed_type_num_heads=2,
        resnet_time_scale_shift="scale_shift", act_fn="gelu", **extra,
    ).eval()


def _if_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                         thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0, clip_sample=True,
                         clip_sample_range=1.0, prediction_type="epsilon")


def build_tiny_if(stage_1_path: str | Path, stage_2_path: str | Path | None = None, seed: int = 0,
                  size_1: int = 16, size_2: int = 64) -> tuple[Path, Path | None]:
    """Save a tiny DeepFloyd IF stage I (pixels at ``size_1``) and optionally stage II (``size_2``)."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    stage_1_path = Path(stage_1_path)
    tok_dir = stage_1_path.parent / f".tok-{stage_1_path.name}"
    tok, t5 = _t5_parts(tok_dir, d_model=32, seed=seed + 2)
    common = dict(tokenizer=tok, text_encoder=t5, safety_checker=None, feature_extractor=None, watermarker=None,
                  requires_safety_checker=False)
    IFPipeline(unet=_if_unet(3, size_1, False, seed), scheduler=_if_scheduler(), **common).save_pretrained(stage_1_path)
    if stage_2_path is None:
        return stage_1_path, None
    stage_2_path = Path(stage_2_path)
    noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    IFSuperResolutionPipeline(
        unet=_if_unet(6, size_2, True, seed + 1), scheduler=_if_scheduler(), image_noising_scheduler=noising, **common,
    ).save_pretrained(stage_2_path)
    return stage_1_path, stage_2_path


def build_tiny_lcm(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny latent-consistency (LCM) SD pipeline: a few-step model driven by the generic adapter."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16, time_cond_proj_dim=32,
    ).eval()
    pipe = LatentConsistencyModelPipeline(
        vae=tiny_vae(seed), text_encoder=_clip_text_encoder(32, seed=seed),
        tokenizer=_tokenizer(path.parent / f".tok-{path.name}"), unet=unet,
        scheduler=LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


# --- single-file checkpoints in the original (LDM / Stability) key layout -------------------------
# diffusers' ``from_single_file`` only understands the layout of the original training repos, so we
# write our tiny models in that layout to exercise the real conversion code. The mapping below is the
# inverse of that conversion for the architectures built above (UNet2DConditionModel, AutoencoderKL,
# CLIP text encoders); any key it cannot name raises, so a new architecture fails loudly.

_LDM_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                    "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_LDM_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _component_weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((folder / name).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder / name}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def _rename_by_prefix(weights: dict[str, torch.Tensor], prefixes: dict[str, tuple[str, dict[str, str]]],
                      what: str) -> dict[str, torch.Tensor]:
    """Rename each key by its longest matching diffusers prefix; the tail is renamed by the table."""
    out: dict[str, torch.Tensor] = {}
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, value in weights.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"no original-layout name for {what} weight {key!r}")
        new_prefix, tail_names = prefixes[prefix]
        tail = key[len(prefix):]
        for old, new in tail_names.items():
            if tail.startswith(old + "."):
                tail = new + tail[len(old):]
                break
        out[new_prefix + tail] = value
    return out


def _ldm_unet(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    lpb, levels = config["layers_per_block"], len(config["down_block_types"])
    res, plain = _LDM_UNET_RESNET, {}
    prefixes: dict[str, tuple[str, dict[str, str]]] = {
        "conv_in.": ("input_blocks.0.0.", plain), "time_embedding.linear_1.": ("time_embed.0.", plain),
        "time_embedding.linear_2.": ("time_embed.2.", plain), "add_embedding.linear_1.": ("label_emb.0.0.", plain),
        "add_embedding.linear_2.": ("label_emb.0.2.", plain), "conv_norm_out.": ("out.0.", plain),
        "conv_out.": ("out.2.", plain), "mid_block.resnets.0.": ("middle_block.0.", res),
        "mid_block.attentions.0.": ("middle_block.1.", plain), "mid_block.resnets.1.": ("middle_block.2.", res),
    }
    for b in range(levels):
        # LDM numbers the down path flat: conv_in, then per level its layers and its downsampler.
        for i in range(lpb):
            n = 1 + b * (lpb + 1) + i
            prefixes[f"down_blocks.{b}.resnets.{i}."] = (f"input_blocks.{n}.0.", res)
            prefixes[f"down_blocks.{b}.attentions.{i}."] = (f"input_blocks.{n}.1.", plain)
        prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = (f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op.", plain)
        # The up path has one more layer per level; the upsampler sits after the attention, if any.
        has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in weights)
        for i in range(lpb + 1):
            n = b * (lpb + 1) + i
            prefixes[f"up_blocks.{b}.resnets.{i}."] = (f"output_blocks.{n}.0.", res)
            prefixes[f"up_blocks.{b}.attentions.{i}."] = (f"output_blocks.{n}.1.", plain)
        last = b * (lpb + 1) + lpb
        prefixes[f"up_blocks.{b}.upsamplers.0.conv."] = (f"output_blocks.{last}.{2 if has_attn else 1}.conv.", plain)
    return _rename_by_prefix(weights, prefixes, "UNet")


def _ldm_vae(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    levels, plain, res = len(config["down_block_types"]), {}, {"conv_shortcut": "nin_shortcut"}
    prefixes: dict[str, tuple[str, dict[str, str]]] = {"quant_conv.": ("quant_conv.", plain),
                                                       "post_quant_conv.": ("post_quant_conv.", plain)}
    for part in ("encoder", "decoder"):
        prefixes.update({
            f"{part}.conv_in.": (f"{part}.conv_in.", plain), f"{part}.conv_out.": (f"{part}.conv_out.", plain),
            f"{part}.conv_norm_out.": (f"{part}.norm_out.", plain),
            f"{part}.mid_block.resnets.0.": (f"{part}.mid.block_1.", res),
            f"{part}.mid_block.resnets.1.": (f"{part}.mid.block_2.", res),
            f"{part}.mid_block.attentions.0.": (f"{part}.mid.attn_1.", _LDM_VAE_ATTN),
        })
    for b in range(levels):
        prefixes[f"encoder.down_blocks.{b}.downsamplers.0.conv."] = (f"encoder.down.{b}.downsample.conv.", plain)
        # The LDM decoder counts its levels from the bottom (up.0 is the full-resolution one).
        prefixes[f"decoder.up_blocks.{b}.upsamplers.0.conv."] = (f"decoder.up.{levels - 1 - b}.upsample.conv.", plain)
        for i in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{b}.resnets.{i}."] = (f"encoder.down.{b}.block.{i}.", res)
            prefixes[f"decoder.up_blocks.{b}.resnets.{i}."] = (f"decoder.up.{levels - 1 - b}.block.{i}.", res)
    out = _rename_by_prefix(weights, prefixes, "VAE")
    # LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers.
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def _ldm_clip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (SD 1.x, SDXL's first encoder): transformers' own names under ``text_model.``."""
    # transformers >= 5.6 saves CLIPTextModel without its ``text_model.`` wrapper; the files have it.
    return {prefix + (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in weights.items()}


def _ldm_open_clip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """open-clip layout (SDXL's second encoder): fused q/k/v, ``resblocks``, transposed projection."""
    w = {k.removeprefix("text_model."): v for k, v in weights.items()}
    out = {
        prefix + "positional_embedding": w.pop("embeddings.position_embedding.weight"),
        prefix + "token_embedding.weight": w.pop("embeddings.token_embedding.weight"),
        prefix + "ln_final.weight": w.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": w.pop("final_layer_norm.bias"),
        prefix + "text_projection": w.pop("text_projection.weight").T.contiguous(),
    }
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    layers = sorted({int(k.split(".")[2]) for k in w if k.startswith("encoder.layers.")})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            qkv = [w.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            for old, new in names.items():
                out[f"{dst}{new}.{kind}"] = w.pop(f"{src}{old}.{kind}")
    if w:
        raise ValueError(f"no open-clip name for text encoder weights {sorted(w)[:3]}")
    return out


def save_single_file(diffusers_folder: str | Path, out_file: str | Path, denoiser_only: bool = False) -> Path:
    """Write a (tiny) SD 1.x / SDXL base / SDXL refiner / SD3 / Flux diffusers folder as ONE original-layout file.

    The result loads with ``<Pipeline>.from_single_file(out_file, config=diffusers_folder)``, i.e.
    through diffusers' real LDM conversion: UNet under ``model.diffusion_model.``, VAE under
    ``first_stage_model.``, CLIP under ``cond_stage_model.transformer.`` (SD) or
    ``conditioner.embedders.0.transformer.`` (SDXL), SDXL's second encoder in open-clip layout under
    ``conditioner.embedders.1.model.`` (``embedders.0`` for the refiner, which has only that one).
    SD3 / Flux: the transformer in Stability's / BFL's layout under ``model.diffusion_model.``, the VAE
    under ``first_stage_model.``, the text encoders under ``text_encoders.*``. ``denoiser_only``: the
    UNet / transformer alone (a UNet fine-tune, ``flux1-dev.safetensors``).
    """
    from safetensors.torch import save_file

    folder, out_file = Path(diffusers_folder), Path(out_file)
    index = json.loads((folder / "model_index.json").read_text())

    def present(name: str) -> bool:
        return bool(index.get(name)) and index[name][0] is not None

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text())

    if present("transformer"):
        return _save_transformer_single_file(folder, index, config, out_file, denoiser_only)
    tensors = {"model.diffusion_model." + k: v for k, v in _ldm_unet(_component_weights(folder, "unet"), config("unet")).items()}
    if not denoiser_only:
        tensors.update(_ldm_vae_and_text(folder, present, config))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_file), metadata={"format": "pt"})
    return out_file


def _ldm_vae_and_text(folder: Path, present: Any, config: Any) -> dict[str, torch.Tensor]:
    """SD 1.x / SDXL's VAE and text encoders in the LDM layout."""
    tensors = {"first_stage_model." + k: v for k, v in _ldm_vae(_component_weights(folder, "vae"), config("vae")).items()}
    if present("text_encoder_2"):
        if present("text_encoder"):
            # diffusers tells SDXL's two encoders apart only by width (768 vs 1280 in the real model).
            w1, w2 = config("text_encoder")["hidden_size"], config("text_encoder_2")["hidden_size"]
            if w1 == w2:
                raise ValueError(
                    f"both SDXL text encoders are {w1} wide: diffusers' single-file loader would load the first one "
                    "twice; build the model with build_tiny_sdxl_distinct()"
                )
            tensors.update(_ldm_clip(_component_weights(folder, "text_encoder"), "conditioner.embedders.0.transformer."))
            second = "conditioner.embedders.1.model."
        else:  # refiner
            second = "conditioner.embedders.0.model."
        tensors.update(_ldm_open_clip(_component_weights(folder, "text_encoder_2"), second))
    elif present("text_encoder"):
        tensors.update(_ldm_clip(_component_weights(folder, "text_encoder"), "cond_stage_model.transformer."))
    return tensors


# --- single-file SD3 / Flux (issue 18 item 7): the inverse of diffusers' transformer conversions ---

def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """Original AdaLN weights hold (shift, scale), diffusers' (scale, shift): the swap is its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _pop_all(w: dict[str, torch.Tensor], names: dict[str, str], src: str, dst: str) -> dict[str, torch.Tensor]:
    """Move ``src+old.{weight,bias}`` to ``dst+new.*`` for each pair present in ``w``."""
    out: dict[str, torch.Tensor] = {}
    for old, new in names.items():
        for kind in ("weight", "bias"):
            if f"{src}{old}.{kind}" in w:
                out[f"{dst}{new}.{kind}"] = w.pop(f"{src}{old}.{kind}")
    return out


def _fused(w: dict[str, torch.Tensor], parts: list[str], src: str, dst: str) -> dict[str, torch.Tensor]:
    """Concatenate separate projections (q, k, v[, mlp]) into the original fused one, weights and biases."""
    return {f"{dst}.{kind}": torch.cat([w.pop(f"{src}{p}.{kind}") for p in parts], dim=0) for kind in ("weight", "bias")}


def _check_empty(w: dict[str, torch.Tensor], what: str) -> None:
    if w:
        raise ValueError(f"no original-layout name for {what} weights {sorted(w)[:3]}")


def sd3_original_transformer(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD3 / SD 3.5 MMDiT weights in Stability's layout (inverse of
    ``convert_sd3_transformer_checkpoint_to_diffusers``), without the ``model.diffusion_model.`` prefix."""
    w = dict(weights)
    out = {"pos_embed": w.pop("pos_embed.pos_embed")}
    out.update(_pop_all(w, {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
                            "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
                            "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
                            "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
                            "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
                            "proj_out": "final_layer.linear"}, "", ""))
    out.update({f"final_layer.adaLN_modulation.1.{k}": _swap_halves(w.pop(f"norm_out.linear.{k}")) for k in ("weight", "bias")})
    layers = sorted({int(k.split(".")[1]) for k in w if k.startswith("transformer_blocks.")})
    for i in layers:
        s, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        out.update(_fused(w, ["attn.to_q", "attn.to_k", "attn.to_v"], s, x + "attn.qkv"))
        out.update(_fused(w, ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], s, c + "attn.qkv"))
        if f"{s}attn2.to_q.weight" in w:  # SD 3.5 medium's dual attention
            out.update(_fused(w, ["attn2.to_q", "attn2.to_k", "attn2.to_v"], s, x + "attn2.qkv"))
        out.update(_pop_all(w, {"attn.to_out.0": "attn.proj", "attn2.to_out.0": "attn2.proj", "norm1.linear": "adaLN_modulation.1",
                                "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2"}, s, x))
        out.update(_pop_all(w, {"attn.to_add_out": "attn.proj", "ff_context.net.0.proj": "mlp.fc1",
                                "ff_context.net.2": "mlp.fc2"}, s, c))
        for old, new in {"attn.norm_q": x + "attn.ln_q", "attn.norm_k": x + "attn.ln_k", "attn.norm_added_q": c + "attn.ln_q",
                         "attn.norm_added_k": c + "attn.ln_k", "attn2.norm_q": x + "attn2.ln_q",
                         "attn2.norm_k": x + "attn2.ln_k"}.items():
            if f"{s}{old}.weight" in w:
                out[f"{new}.weight"] = w.pop(f"{s}{old}.weight")
        last = i == layers[-1]  # its context stream only feeds attention: one AdaLN pair, stored swapped
        for kind in ("weight", "bias"):
            t = w.pop(f"{s}norm1_context.linear.{kind}")
            out[f"{c}adaLN_modulation.1.{kind}"] = _swap_halves(t) if last else t
    _check_empty(w, "SD3 transformer")
    return out


def flux_original_transformer(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flux.1 transformer weights in Black Forest Labs' layout (inverse of
    ``convert_flux_transformer_checkpoint_to_diffusers``), without the ``model.diffusion_model.`` prefix.

    diffusers' conversion hard-codes Flux.1's width (3072) for the single blocks' fused projection, so
    only full-width transformers convert back; narrower ones are written here but cannot be read there.
    """
    w = dict(weights)
    out = _pop_all(w, {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
                       "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
                       "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
                       "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
                       "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
                       "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
                       "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}, "", "")
    out.update({f"final_layer.adaLN_modulation.1.{k}": _swap_halves(w.pop(f"norm_out.linear.{k}")) for k in ("weight", "bias")})
    scales = {"attn.norm_q": "img_attn.norm.query_norm.scale", "attn.norm_k": "img_attn.norm.key_norm.scale",
              "attn.norm_added_q": "txt_attn.norm.query_norm.scale", "attn.norm_added_k": "txt_attn.norm.key_norm.scale"}
    for i in sorted({int(k.split(".")[1]) for k in w if k.startswith("transformer_blocks.")}):
        s, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out.update(_fused(w, ["attn.to_q", "attn.to_k", "attn.to_v"], s, d + "img_attn.qkv"))
        out.update(_fused(w, ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], s, d + "txt_attn.qkv"))
        out.update(_pop_all(w, {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
                                "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
                                "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj",
                                "attn.to_add_out": "txt_attn.proj"}, s, d))
        out.update({d + new: w.pop(f"{s}{old}.weight") for old, new in scales.items()})
    for i in sorted({int(k.split(".")[1]) for k in w if k.startswith("single_transformer_blocks.")}):
        s, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out.update(_fused(w, ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], s, d + "linear1"))
        out.update(_pop_all(w, {"norm.linear": "modulation.lin", "proj_out": "linear2"}, s, d))
        out[d + "norm.query_norm.scale"] = w.pop(f"{s}attn.norm_q.weight")
        out[d + "norm.key_norm.scale"] = w.pop(f"{s}attn.norm_k.weight")
    _check_empty(w, "Flux transformer")
    return out


def _sd3_text_and_vae(folder: Path, index: dict, config: Any) -> dict[str, torch.Tensor]:
    """VAE under ``first_stage_model.``; CLIP-L / CLIP-G / T5 under ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.``
    (the layout of ``sd3.5_medium.safetensors`` and of ComfyUI's full Flux checkpoints)."""
    tensors = {"first_stage_model." + k: v for k, v in _ldm_vae(_component_weights(folder, "vae"), config("vae")).items()}
    clips = [n for n in ("text_encoder", "text_encoder_2") if (index.get(n) or [None, None])[1] in ("CLIPTextModel",
                                                                                                  "CLIPTextModelWithProjection")]
    t5s = [n for n in ("text_encoder_2", "text_encoder_3") if (index.get(n) or [None, None])[1] == "T5EncoderModel"]
    widths = [config(n)["hidden_size"] for n in clips]
    if len(set(widths)) < len(widths):
        # diffusers tells CLIP-L from CLIP-G only by width (768 vs 1280 in the real models)
        raise ValueError(f"both CLIP encoders are {widths[0]} wide: diffusers' single-file loader would load CLIP-L "
                         "twice; build the model with build_tiny_sd3_distinct()")
    for name, slot in zip(clips, ("clip_l", "clip_g")):
        w = {("" if k.startswith(("text_model.", "text_projection")) else "text_model.") + k: v
             for k, v in _component_weights(folder, name).items()}
        if slot == "clip_l" and "text_projection.weight" in w:
            # the files hold no CLIP-L projection: diffusers sets it to the identity
            proj = w.pop("text_projection.weight")
            if not torch.equal(proj, torch.eye(proj.shape[0], dtype=proj.dtype)):
                raise ValueError("CLIP-L's text projection is not the identity, which is all a single file can hold; "
                                 "build the model with build_tiny_sd3_distinct()")
        tensors.update({f"text_encoders.{slot}.transformer.{k}": v for k, v in w.items()})
    for name in t5s:
        w = _component_weights(folder, name)
        w.setdefault("encoder.embed_tokens.weight", w["shared.weight"].clone())  # tied; saved once
        tensors.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in w.items()})
    return tensors


def _save_transformer_single_file(folder: Path, index: dict, config: Any, out_file: Path, denoiser_only: bool) -> Path:
    from safetensors.torch import save_file

    kind = index["transformer"][1]
    to_original = {"SD3Transformer2DModel": sd3_original_transformer, "FluxTransformer2DModel": flux_original_transformer}
    if kind not in to_original:
        raise ValueError(f"no original single-file layout known for a {kind}")
    tensors = {"model.diffusion_model." + k: v for k, v in to_original[kind](_component_weights(folder, "transformer")).items()}
    if not denoiser_only:
        tensors.update(_sd3_text_and_vae(folder, index, config))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_file), metadata={"format": "pt"})
    return out_file


def build_tiny_sd3_distinct(path: str | Path, seed: int = 0) -> Path:
    """A tiny SD 3.5-medium-like pipeline that survives the single-file round trip.

    As in the real model, CLIP-G (48) is wider than CLIP-L (32) and CLIP-L's projection is the
    identity (what diffusers assumes for a file); the MMDiT has SD 3.5's QK-norm and a dual-attention
    layer, so those conversion paths are exercised too.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    path = Path(path)
    tok_dir = path.parent / f".tok-{path.name}"
    t5_tok, t5 = _t5_parts(tok_dir / "t5", d_model=80, seed=seed + 2)
    clip_l = _clip_text_encoder(32, projection=True, seed=seed)
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(32))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=80, caption_projection_dim=32, pooled_projection_dim=80, out_channels=16,
        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm",
    ).eval()
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(seed),
        text_encoder=clip_l, tokenizer=_tokenizer(tok_dir / "clip"),
        text_encoder_2=_clip_text_encoder(48, projection=True, seed=seed + 1), tokenizer_2=_tokenizer(tok_dir / "clip"),
        text_encoder_3=t5, tokenizer_3=t5_tok,
    ).save_pretrained(path)
    return path


def build_tiny_sdxl_distinct(path: str | Path, seed: int = 0, scheduler: str = "euler", width_2: int = 48) -> Path:
    """A tiny SDXL base whose second text encoder is wider than the first, as in the real model.

    :func:`build_tiny_sdxl` gives both encoders the same width, which diffusers' single-file loader
    cannot tell apart; this variant swaps in a ``width_2``-wide second encoder and a UNet sized for it.
    """
    from diffusers import UNet2DConditionModel

    path = build_tiny_sdxl(path, seed=seed, scheduler=scheduler)
    width_1 = json.loads((path / "text_encoder" / "config.json").read_text())["hidden_size"]
    cfg = dict(UNet2DConditionModel.load_config(path / "unet"))
    # Cross-attention sees both encoders' hidden states; the time embedding gets 6 time ids + pooled enc. 2.
    cfg.update(cross_attention_dim=width_1 + width_2,
               projection_class_embeddings_input_dim=6 * cfg["addition_time_embed_dim"] + width_2)
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(cfg).eval().save_pretrained(path / "unet")
    _clip_text_encoder(width_2, projection=True, seed=seed + 1).save_pretrained(path / "text_encoder_2")
    return path


def copy_model_configs(diffusers_folder: str | Path, out_folder: str | Path) -> Path:
    """Copy a diffusers folder without its weights (what ``config=`` needs next to a single file).

    Loading a single file with a config-only folder proves every weight came from the file: diffusers
    silently takes a component's weights from ``config`` when the file lacks them.
    """
    import shutil

    src, dst = Path(diffusers_folder), Path(out_folder)
    for f in src.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".txt", ".model"):
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst / f.relative_to(src))
    return dst


def build_tiny_x4_upscaler(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny x4 latent upscaler (IF's usual stage III): 7-channel UNet, x4 VAE, noise-level labels."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16, num_class_embeds=351,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        scaling_factor=0.08333,
    ).eval()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=_clip_text_encoder(32, seed=seed), tokenizer=_tokenizer(path.parent / f".tok-{path.name}"),
        unet=unet, low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, watermarker=None, max_noise_level=350,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_sd_deep(path: str | Path, seed: int = 0, scheduler: str = "euler") -> Path:
    """A tiny SD pipeline whose UNet has four levels, with attention only at latent/8 (issue #7).

    :func:`build_tiny_sd` attends at latent/2: at 4096 x 4096 that is 256² = 65k tokens per
    self-attention, quadratic, and an edit takes many minutes on a CPU. Here the three upper levels
    are convolution-only and self/cross-attention (down, mid and up) runs at latent/8: 64² = 4096
    tokens for a 4096² image. Real SD also confines attention to the lower levels (SDXL has none at
    latent/1); this model just stops one level further down. Same VAE, text encoder and tokenizer
    as :func:`build_tiny_sd`.
    """
    from diffusers import UNet2DConditionModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    ).eval()
    return _save_sd(path, unet, seed, scheduler)
