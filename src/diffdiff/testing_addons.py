"""Tiny offline add-ons for tests and benchmarks: inpainting UNets, ControlNets, LoRAs, IP-Adapters, Marigold.

Like :mod:`diffdiff.testing`, everything here is built from configs in code with random weights and
saved through the libraries' own save paths (``save_pretrained``, diffusers' ``save_lora_weights``,
safetensors), so callers load it back through the real loaders. Weights that diffusers or peft
initialise to zero (ControlNet's zero convolutions, LoRA's B matrices) are drawn at random here, so
an add-on visibly changes the output; a real add-on would be trained instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .testing import build_tiny_sd, build_tiny_sdxl


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def build_tiny_inpaint(path: str | Path, base: str = "sd", seed: int = 0, scheduler: str = "euler",
                       base_model: str | Path | None = None) -> Path:
    """Save a tiny 9-channel inpainting pipeline (``base``: ``"sd"`` or ``"sdxl"``) to ``path``.

    The UNet takes latents (4) + mask (1) + masked-image latents (4), as the real inpainting
    checkpoints do; the folder's ``model_index.json`` names diffusers' inpainting pipeline class.
    ``base_model``: a tiny folder of that base to take the other components from (else one is built).
    """
    import diffusers

    path = Path(path)
    base_dir = Path(base_model) if base_model is not None else path.parent / f".base-{path.name}"
    if base_model is None:
        (build_tiny_sd if base == "sd" else build_tiny_sdxl)(base_dir, seed=seed, scheduler=scheduler)
    cls = diffusers.StableDiffusionInpaintPipeline if base == "sd" else diffusers.StableDiffusionXLInpaintPipeline
    pipe = cls.from_pretrained(base_dir, safety_checker=None) if base == "sd" else cls.from_pretrained(base_dir)
    config = dict(pipe.unet.config)
    config["in_channels"] = 9
    torch.manual_seed(seed + 1)
    unet = diffusers.UNet2DConditionModel.from_config(config).eval()
    components: dict[str, Any] = dict(pipe.components, unet=unet)
    cls(**components).save_pretrained(path)
    return path


def build_tiny_flux_fill(path: str | Path, base_model: str | Path, seed: int = 0) -> Path:
    """Save a tiny Flux Fill pipeline built from the tiny Flux folder ``base_model``.

    Its transformer reads the packed latents (64) + packed masked-image latents (64) + the packed
    8x8-per-cell mask (256), as FLUX.1-Fill does, and predicts the 64 latent channels.
    """
    import diffusers

    base = diffusers.FluxPipeline.from_pretrained(base_model)
    latent = int(base.transformer.config.in_channels)
    config = dict(base.transformer.config)
    config.update(in_channels=2 * latent + 4 * base.vae_scale_factor**2, out_channels=latent)
    torch.manual_seed(seed + 3)
    transformer = diffusers.FluxTransformer2DModel.from_config(config).eval()
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    parts = {k: base.components[k] for k in names}
    diffusers.FluxFillPipeline(**parts, transformer=transformer).save_pretrained(path)
    return Path(path)


def build_tiny_controlnet(path: str | Path, base_model: str | Path, seed: int = 0, union: bool = False) -> Path:
    """Save a tiny ControlNet matching the UNet of the diffusers folder ``base_model`` to ``path``.

    Built with ``ControlNetModel.from_unet`` (``ControlNetUnionModel`` with ``union=True``, SDXL
    only); the zero-initialised output convolutions get random weights so the control shows.
    """
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(Path(base_model) / "unet")
    cls = diffusers.ControlNetUnionModel if union else diffusers.ControlNetModel
    torch.manual_seed(seed)
    net = cls.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    if union:  # from_unet keeps the real model's 320-wide control-type transformer: size it to the tiny UNet
        width = int(unet.config.block_out_channels[0])
        net = cls.from_config(net.config, num_trans_channel=width, num_proj_channel=width, num_trans_head=4)
    parts = [net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    parts += list(net.controlnet_down_blocks)
    for i, part in enumerate(parts):
        _randomise(part, seed * 1000 + i, std=0.05)
    net.save_pretrained(path)
    return Path(path)


def build_tiny_flux_controlnet(path: str | Path, base_model: str | Path, seed: int = 0) -> Path:
    """Save a tiny Flux ControlNet (one double and one single block) for ``base_model``'s transformer."""
    import diffusers

    transformer = diffusers.FluxTransformer2DModel.from_pretrained(Path(base_model) / "transformer")
    torch.manual_seed(seed)
    net = diffusers.FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=1, attention_head_dim=transformer.config.attention_head_dim,
        num_attention_heads=transformer.config.num_attention_heads)
    parts = [net.controlnet_x_embedder, *net.controlnet_blocks, *net.controlnet_single_blocks]
    for i, part in enumerate(parts):  # zero-initialised by diffusers
        _randomise(part, seed * 1000 + i, std=0.05)
    net.save_pretrained(path)
    return Path(path)


def save_random_lora(base_model: str | Path, out_dir: str | Path, rank: int = 4, seed: int = 0,
                     text_encoder: bool = False) -> Path:
    """Save a random LoRA for the UNet (and optionally the text encoder) of ``base_model``.

    Uses peft's ``LoraConfig`` / ``get_peft_model_state_dict`` and diffusers' own
    ``save_lora_weights``, as diffusers' training scripts do. Returns the ``.safetensors`` file.
    """
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = diffusers.DiffusionPipeline.from_pretrained(base_model)
    torch.manual_seed(seed)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False))
    layers: dict[str, Any] = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj"],
                                                 init_lora_weights=False))
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    out_dir = Path(out_dir)
    type(pipe).save_lora_weights(out_dir, safe_serialization=True, **layers)
    return out_dir / "pytorch_lora_weights.safetensors"


def build_tiny_ip_adapter(folder: str | Path, base_model: str | Path, seed: int = 0, embed_dim: int = 16) -> Path:
    """Save a tiny IP-Adapter for ``base_model``'s UNet in the ``h94/IP-Adapter`` layout.

    ``folder/ip-adapter_tiny.safetensors`` holds ``image_proj.*`` (diffusers' ``ImageProjection``:
    4 image tokens) and ``ip_adapter.{1,3,5...}.to_k_ip/to_v_ip`` for each cross-attention layer, in
    the order diffusers' loader walks them; ``folder/image_encoder`` is a tiny
    ``CLIPVisionModelWithProjection``. Returns the weights file.
    """
    import diffusers
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    unet = diffusers.UNet2DConditionModel.from_pretrained(Path(base_model) / "unet")
    cross = int(unet.config.cross_attention_dim)
    blocks = list(unet.config.block_out_channels)
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * 0.2

    weights: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": rnd(4 * cross, embed_dim), "image_proj.proj.bias": rnd(4 * cross),
        "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        weights[f"ip_adapter.{key}.to_k_ip.weight"] = rnd(hidden, cross)
        weights[f"ip_adapter.{key}.to_v_ip.weight"] = rnd(hidden, cross)
        key += 2
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "ip-adapter_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out))
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, projection_dim=embed_dim, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8,
    )).eval()
    encoder.save_pretrained(folder / "image_encoder")
    return out


def build_tiny_marigold(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny Marigold depth pipeline (8-channel UNet: image + depth latents) to ``path``."""
    import diffusers

    path = Path(path)
    base_dir = path.parent / f".base-{path.name}"
    build_tiny_sd(base_dir, seed=seed)
    base = diffusers.StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None)
    config = dict(base.unet.config)
    config["in_channels"] = 8
    torch.manual_seed(seed + 2)
    unet = diffusers.UNet2DConditionModel.from_config(config).eval()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                        prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = diffusers.MarigoldDepthPipeline(unet=unet, vae=base.vae, scheduler=scheduler, text_encoder=base.text_encoder,
                                           tokenizer=base.tokenizer, prediction_type="depth",
                                           default_denoising_steps=2, default_processing_resolution=64)
    pipe.save_pretrained(path)
    return path


def save_kohya_lora(diffusers_lora: str | Path, out_file: str | Path) -> Path:
    """Rewrite a diffusers-format SD UNet LoRA file in the Kohya / A1111 single-file layout.

    ``unet.<module path>.lora.down.weight`` (or ``lora_A``) becomes ``lora_unet_<module_path>.lora_down.weight``
    (``up`` / ``lora_B`` -> ``lora_up``) with an ``.alpha`` equal to the rank, as Kohya's scripts save them.
    """
    from safetensors.torch import load_file, save_file

    out: dict[str, torch.Tensor] = {}
    suffixes = {".lora.down.weight": "down", ".lora_A.weight": "down", ".lora.up.weight": "up", ".lora_B.weight": "up"}
    for key, value in load_file(str(diffusers_lora)).items():
        suffix = next(x for x in suffixes if key.endswith(x))
        name = "lora_unet_" + key.removeprefix("unet.")[: -len(suffix)].replace(".", "_")
        out[f"{name}.lora_{suffixes[suffix]}.weight"] = value
        if suffixes[suffix] == "down":
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(out, str(out_file))
    return Path(out_file)
