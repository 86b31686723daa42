"""Tiny random-weight pipelines for the families beyond the first ones (issue 18), built offline.

Companion of :mod:`diffdiff.testing` (SD, SDXL, SD3, Flux, Kandinsky 2.2, IF, LCM), same rules:
configs in code (hidden sizes 8-32, one or two layers), tokenizers written by hand because none
ship offline, ``save_pretrained`` so callers load them back through the real ``from_pretrained``.
Builders: PixArt-Sigma, Sana (DC-AE, x32), Lumina2, HunyuanDiT, CogView4 (text-to-image only),
Chroma, Flux Kontext (instruction edit, Flux's components), Kandinsky 3 (``movq`` autoencoder),
Qwen-Image (2x2 packing on a 5-D video-style VAE), Z-Image (an img2img pipeline), Sana Sprint
(TrigFlow ``SCMScheduler``), Kolors (ChatGLM, sentencepiece trained offline), HiDream (four text
encoders, a size of its own choosing) and Qwen-Image-Edit / Edit-Plus (a Qwen2.5-VL with a vision tower).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .processors import image_only, video_processors_available
from .testing import _CHARS, _flow_vae, _t5_parts, build_tiny_flux, tiny_vae


def _t5(folder: Path, d_model: int = 32, seed: int = 0):
    return _t5_parts(folder, d_model=d_model, seed=seed)


def build_tiny_pixart_sigma(path: str | Path, seed: int = 0) -> Path:
    """PixArt-Sigma: DiT on SD's 4-channel latents, T5, DPM-Solver; text-to-image only in diffusers."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    path = Path(path)
    tok, t5 = _t5(path.parent / f".tok-{path.name}", d_model=32, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=32, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            num_train_timesteps=1000)
    PixArtSigmaPipeline(tokenizer=tok, text_encoder=t5, vae=tiny_vae(seed), transformer=transformer,
                        scheduler=scheduler).save_pretrained(path)
    return path


def build_tiny_chroma(path: str | Path, seed: int = 0) -> Path:
    """Chroma: Flux-like transformer on 2x2-packed 16-channel latents, T5 only, flow matching."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    path = Path(path)
    tok, t5 = _t5(path.parent / f".tok-{path.name}", d_model=32, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(2, 2, 4), approximator_hidden_dim=32,
        approximator_layers=1, approximator_num_channels=16,
    ).eval()
    ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(seed), text_encoder=t5,
                   tokenizer=tok, transformer=transformer, image_encoder=None,
                   feature_extractor=None).save_pretrained(path)
    return path


def build_tiny_flux_kontext(path: str | Path, seed: int = 0) -> Path:
    """Flux Kontext: Flux's components under the instruction-edit pipeline (reference image tokens)."""
    from diffusers import FluxKontextPipeline, FluxPipeline

    path = Path(path)
    flux = build_tiny_flux(path.parent / f".flux-{path.name}", seed=seed)
    components = FluxPipeline.from_pretrained(flux).components
    FluxKontextPipeline(**components).save_pretrained(path)
    return path


def build_tiny_kandinsky3(path: str | Path, seed: int = 0) -> Path:
    """Kandinsky 3: its own UNet, T5, DDPM, and a VQ autoencoder named ``movq``."""
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet, VQModel

    path = Path(path)
    tok, t5 = _t5(path.parent / f".tok-{path.name}", d_model=32, seed=seed + 2)
    torch.manual_seed(seed)
    # four levels, as the real model: its pipeline sizes latents in multiples of 8 (images of 64 px)
    unet = Kandinsky3UNet(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
                          block_out_channels=(32, 32, 64, 64), cross_attention_dim=4, encoder_hid_dim=32).eval()
    movq = VQModel(
        # four levels: the pipeline assumes the real x8 geometry
        block_out_channels=(32, 32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3, in_channels=3,
        out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, vq_embed_dim=4,
    ).eval()
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="squaredcos_cap_v2",
                              clip_sample=True, thresholding=False)
    Kandinsky3Pipeline(tokenizer=tok, text_encoder=t5, unet=unet, scheduler=scheduler,
                       movq=movq).save_pretrained(path)
    return path


def _byte_level_tokenizer(folder: Path, specials: tuple[str, ...]):
    """A byte-level BPE (GPT-2 style) Qwen2 tokenizer with no merges: one token per byte."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = Qwen2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=None,
                         pad_token="<|endoftext|>", eos_token="<|endoftext|>", additional_special_tokens=list(specials))
    for sp in ("<|endoftext|>", *specials):
        tok.add_special_tokens({"additional_special_tokens": [sp]}) if sp not in tok.get_vocab() else None
    tok.save_pretrained(folder)
    return tok


def _qwen_image_transformer(seed: int) -> Any:
    """The tiny Qwen-Image MMDiT (Qwen-Image and its edit pipelines share it)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    ).eval()


def _qwen_text_config(tok: Any) -> dict[str, Any]:
    """The tiny Qwen2.5-VL's language half over ``tok`` (shared by Qwen-Image and its edit pipelines)."""
    return {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(tok),
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0, "bos_token_id": tok.pad_token_id, "eos_token_id": tok.pad_token_id}


def build_tiny_qwen_image(path: str | Path, seed: int = 0) -> Path:
    """Qwen-Image: MMDiT on 2x2-packed latents of a 5-D (frame-axis) VAE with latents_mean/std."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    tok = _byte_level_tokenizer(path.parent / f".tok-{path.name}", ("<|im_start|>", "<|im_end|>"))
    transformer = _qwen_image_transformer(seed)
    torch.manual_seed(seed)
    z_dim = 4
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.5, 0.8, 1.2, 1.0],
    ).eval()
    vocab = len(tok)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tok),
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab, vision_end_token_id=vocab + 1, vision_start_token_id=vocab + 2,
        vision_token_id=vocab + 3, image_token_id=vocab + 4, video_token_id=vocab + 5,
        bos_token_id=tok.pad_token_id, eos_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed + 1)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    QwenImagePipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                      text_encoder=text_encoder, tokenizer=tok).save_pretrained(path)
    return path


def _char_gemma_tokenizer(folder: Path):
    """A character-level Gemma tokenizer (WordLevel over characters) with Gemma's special tokens.

    Also serves CogView4, whose GLM tokenizer is any fast tokenizer with a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import GemmaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    # A leading <bos>, as Gemma's own tokenizer adds: an empty prompt is never zero tokens.
    inner.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                         special_tokens=[("<bos>", vocab["<bos>"])])
    tok = GemmaTokenizerFast(tokenizer_object=inner, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                             unk_token="<unk>")
    tok.save_pretrained(folder)
    return tok


def _tiny_gemma2(vocab_size: int) -> Any:
    """A one-layer Gemma 2 text encoder with 8-dim states (Sana's and Lumina2's captioner, tiny)."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(
        head_dim=16, hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512, attn_implementation="eager",
    )).eval()


def build_tiny_sana(path: str | Path, seed: int = 0) -> Path:
    """Sana: linear-attention DiT on a DC-AE (x32, as the real one), Gemma 2, flow matching."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    path = Path(path)
    tok = _char_gemma_tokenizer(path.parent / f".tok-{path.name}")
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32,
    ).eval()
    torch.manual_seed(seed)
    # six levels: the real x32 compression (the pipeline wants sizes in multiples of 32)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock",) * 5 + ("EfficientViTBlock",),
        decoder_block_types=("ResBlock",) * 5 + ("EfficientViTBlock",),
        encoder_block_out_channels=(8,) * 6, decoder_block_out_channels=(8,) * 6,
        encoder_qkv_multiscales=((),) * 5 + ((5,),), decoder_qkv_multiscales=((),) * 5 + ((5,),),
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=[1] * 6, downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    torch.manual_seed(seed + 1)
    text_encoder = _tiny_gemma2(len(tok))
    SanaPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)).save_pretrained(path)
    return path


def build_tiny_lumina2(path: str | Path, seed: int = 0) -> Path:
    """Lumina-Image 2.0: NextDiT on 16-channel flow latents, Gemma 2 captions; text-to-image only."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    path = Path(path)
    tok = _char_gemma_tokenizer(path.parent / f".tok-{path.name}")
    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, hidden_size=16, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=2, multiple_of=16, axes_dim_rope=(2, 2, 4), axes_lens=(320, 32, 32),
        cap_feat_dim=8,
    ).eval()
    torch.manual_seed(seed + 1)
    text_encoder = _tiny_gemma2(len(tok))
    Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(seed),
                    text_encoder=text_encoder, tokenizer=tok).save_pretrained(path)
    return path


def build_tiny_z_image(path: str | Path, seed: int = 0) -> Path:
    """Z-Image: single-stream DiT on 16-channel flow latents, a Qwen3 text encoder (img2img pipeline)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    path = Path(path)
    tok = _byte_level_tokenizer(path.parent / f".tok-{path.name}", ("<|im_start|>", "<|im_end|>"))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(path.parent / f".tok-{path.name}")
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=16, n_layers=1, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[2, 2, 4], axes_lens=[512, 32, 32],
    ).eval()
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8, vocab_size=len(tok), bos_token_id=tok.pad_token_id, eos_token_id=tok.pad_token_id,
    )).eval()
    ZImageImg2ImgPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(seed),
                          text_encoder=text_encoder, tokenizer=tok, transformer=transformer).save_pretrained(path)
    return path


def build_tiny_hunyuandit(path: str | Path, seed: int = 0) -> Path:
    """HunyuanDiT: DiT on SD's latents, BERT + T5 captions, DDPM; no timesteps/sigmas argument, text-to-image only."""
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, BertTokenizer

    path = Path(path)
    tok_dir = path.parent / f".tok-{path.name}"
    (tok_dir / "bert").mkdir(parents=True, exist_ok=True)
    (tok_dir / "bert" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_CHARS]))
    bert_tok = BertTokenizer(str(tok_dir / "bert" / "vocab.txt"), model_max_length=77)
    t5_tok, t5 = _t5(tok_dir / "t5", d_model=32, seed=seed + 2)
    torch.manual_seed(seed + 1)
    bert = BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=80)).eval()
    torch.manual_seed(seed)
    transformer = HunyuanDiT2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16, hidden_size=16, text_len=77,
        text_len_t5=256,
    ).eval()
    HunyuanDiTPipeline(vae=tiny_vae(seed), text_encoder=bert, tokenizer=bert_tok, transformer=transformer,
                       scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.03,
                                               clip_sample=False, steps_offset=1),
                       safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                       text_encoder_2=t5, tokenizer_2=t5_tok).save_pretrained(path)
    return path


def build_tiny_cogview4(path: str | Path, seed: int = 0) -> Path:
    """CogView4: DiT on 16-channel flow latents with a GLM text encoder; text-to-image only."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    path = Path(path)
    tok = _char_gemma_tokenizer(path.parent / f".tok-{path.name}")  # any fast tokenizer with a pad token
    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=8, condition_dim=4, pos_embed_max_size=32, sample_size=8,
        rope_axes_dim=(4, 4),
    ).eval()
    torch.manual_seed(seed + 1)
    text_encoder = GlmModel(GlmConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8, vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=512,
    )).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    CogView4Pipeline(tokenizer=tok, text_encoder=text_encoder, vae=_flow_vae(seed), transformer=transformer,
                     scheduler=scheduler).save_pretrained(path)
    return path


# --- Sana Sprint (issue 18, items 4 and 6) ------------------------------------------------------------

def build_tiny_sana_sprint(path: str | Path, seed: int = 0) -> Path:
    """Sana Sprint: Sana's pieces (DC-AE x32, Gemma 2) with a guidance-embedding DiT and ``SCMScheduler``.

    A TrigFlow consistency model (1-4 steps). Transformer numbers from diffusers' own
    ``tests/pipelines/sana/test_sana_sprint*.py`` (``qk_norm``, ``guidance_embeds``); the
    autoencoder and text encoder are :func:`build_tiny_sana`'s.
    """
    from diffusers import SanaPipeline, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

    path = Path(path)
    sana = SanaPipeline.from_pretrained(build_tiny_sana(path.parent / f".sana-{path.name}", seed=seed))
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32, qk_norm="rms_norm_across_heads", guidance_embeds=True,
    ).eval()
    SanaSprintPipeline(tokenizer=sana.tokenizer, text_encoder=sana.text_encoder, vae=sana.vae,
                       transformer=transformer, scheduler=SCMScheduler()).save_pretrained(path)
    return path


# --- issue 18: Kolors and HiDream (branch s4-kolors) --------------------------------------------------
# Kolors: ChatGLM3 text encoder (diffusers' own copy) with a sentencepiece tokenizer trained here from
# a few lines of text, an SDXL-style UNet with Kolors' text projection. HiDream: two CLIPs, T5 and
# a Llama (character-level fast tokenizer), a mixture-of-experts DiT, flow matching.

_SP_LINES = ("".join(_CHARS), "a red cat", "a photo of a dog on the grass", "make it blue, please!",
             "the quick brown fox jumps over the lazy dog 0123456789")


def _chatglm_tokenizer(folder: Path):
    """diffusers' ChatGLMTokenizer over a character sentencepiece model trained offline (no hub)."""
    import io

    import sentencepiece as spm
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_SP_LINES), model_writer=model, model_type="char",
                                   vocab_size=len(_CHARS) + 3, hard_vocab_limit=False, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    tok = ChatGLMTokenizer(str(folder / "tokenizer.model"))
    tok.save_pretrained(folder)
    return tok


def _tiny_chatglm(vocab_size: int, hidden: int, seed: int):
    """A two-layer ChatGLM3 encoder. diffusers' class leaves weights uninitialised (``skip_init``, and
    RMSNorm's ``torch.empty``): built with ordinary initialisation and unit norms, else NaN."""
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    config = ChatGLMConfig(num_layers=2, padded_vocab_size=vocab_size, hidden_size=hidden, ffn_hidden_size=2 * hidden,
                           kv_channels=8, num_attention_heads=2, seq_length=256, multi_query_attention=True,
                           multi_query_group_num=1, original_rope=True, torch_dtype="float32")
    torch.manual_seed(seed)
    model = ChatGLMModel(config, empty_init=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
    return model.eval()


def build_tiny_kolors(path: str | Path, seed: int = 0) -> Path:
    """Kolors (text-to-image ``KolorsPipeline``): ChatGLM3, SDXL-style UNet (diffusers' test dimensions,
    plus Kolors' ``text_proj`` from the encoder's width to the cross-attention width), Euler."""
    from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel

    path = Path(path)
    tok = _chatglm_tokenizer(path.parent / f".tok-{path.name}")
    hidden = 16
    text_encoder = _tiny_chatglm(tok.vocab_size, hidden, seed + 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=hidden + 6 * 8, cross_attention_dim=8, norm_num_groups=1,
        encoder_hid_dim=hidden, encoder_hid_dim_type="text_proj",
    ).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                       timestep_spacing="leading")
    KolorsPipeline(vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                   image_encoder=None, feature_extractor=None).save_pretrained(path)
    return path


def _char_llama_tokenizer(folder: Path):
    """A character-level fast tokenizer with Llama 3's begin/end-of-text tokens (no hub files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    vocab = {bos: 0, eos: 1, "<unk>": 2}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    inner.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                         special_tokens=[(bos, vocab[bos])])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token=bos, eos_token=eos, pad_token=eos,
                                  unk_token="<unk>", model_max_length=128)
    tok.save_pretrained(folder)
    return tok


def build_tiny_hidream(path: str | Path, seed: int = 0) -> Path:
    """HiDream-I1 (text-to-image only): MoE DiT, two CLIPs with projection, T5, Llama; diffusers' test sizes.

    The pipeline always generates at ``(128 * vae_scale_factor)^2`` pixels (a 128 x 128 latent grid,
    4096 tokens), whatever size it is asked for: a one-level VAE (x1, as diffusers' test, without its
    mid-block attention over those 16384 cells) keeps that 128 x 128 px, and two heads keep it fast."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        HiDreamImagePipeline,
        HiDreamImageTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

    from .testing import _tokenizer, clip_vocab_size

    path = Path(path)
    tok_dir = path.parent / f".tok-{path.name}"
    torch.manual_seed(seed)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(128, 128), llama_layers=(0, 1),
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, layers_per_block=1, mid_block_add_attention=False,
                        scaling_factor=0.3611, shift_factor=0.1159).eval()
    clip_config = CLIPTextConfig(
        vocab_size=clip_vocab_size(), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, projection_dim=32, hidden_act="gelu", bos_token_id=clip_vocab_size() - 2,
        eos_token_id=clip_vocab_size() - 1, pad_token_id=clip_vocab_size() - 1,
    )
    clips = []
    for i in range(2):
        torch.manual_seed(seed + i)
        clips.append(CLIPTextModelWithProjection(clip_config).eval())
    t5_tok, t5 = _t5(tok_dir / "t5", d_model=32, seed=seed + 2)
    llama_tok = _char_llama_tokenizer(tok_dir / "llama")
    torch.manual_seed(seed + 3)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(llama_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, attn_implementation="eager",
    )).eval()
    clip_tok = _tokenizer(tok_dir / "clip")
    HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clips[0], tokenizer=clip_tok,
        text_encoder_2=clips[1], tokenizer_2=clip_tok, text_encoder_3=t5, tokenizer_3=t5_tok, text_encoder_4=llama,
        tokenizer_4=llama_tok, transformer=transformer,
    ).save_pretrained(path)
    return path
# --- end issue 18: Kolors and HiDream ----------------------------------------------------------------------


# --- Qwen-Image-Edit / Edit-Plus (instruction edit; issue 18 item 5) ---------------------------------
#: Qwen2.5-VL's vision markers, as tokens of the byte-level tokenizer (the processor looks them up).
_QWEN_VL_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                     "<|video_pad|>")
#: The tiny processor's pixel budget: the pipelines hand it a ~1 MP (Edit) or 384x384 (Edit-Plus)
#: condition image; this caps the vision tower at 4x4 patches of 14 px (2x2 tokens after merging).
_QWEN_VL_MAX_PIXELS = 56 * 56


def _tiny_qwen_image_edit(path: Path, pipeline_class: str, seed: int) -> Path:
    """Qwen-Image's tiny transformer and VAE, a Qwen2.5-VL with a vision tower, and a Qwen2VLProcessor."""
    import diffusers
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    tok = _byte_level_tokenizer(path.parent / f".tok-{path.name}", _QWEN_VL_SPECIALS)
    ids = {name: tok.convert_tokens_to_ids(f"<|{name}|>") for name in
           ("vision_start", "vision_end", "image_pad", "video_pad")}
    image_processor = Qwen2VLImageProcessor(min_pixels=_QWEN_VL_MAX_PIXELS, max_pixels=_QWEN_VL_MAX_PIXELS,
                                            patch_size=14, temporal_patch_size=2, merge_size=2)
    if video_processors_available():  # (not installed on the test machines)
        from transformers import Qwen2VLVideoProcessor

        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok,
                                     video_processor=Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2,
                                                                           merge_size=2))
    else:  # transformers cannot build the video half without torchvision: saved as a real folder's
        # Qwen2VLProcessor all the same, which diffdiff.loading reads back image-only too
        processor = image_only(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tok)
    transformer = _qwen_image_transformer(seed)
    torch.manual_seed(seed)
    z_dim = 4
    # four levels (x8, the real geometry): the pipelines encode their reference at ~1 MP whatever the
    # output size, and three levels would put 128x128 packed tokens before the transformer
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 2, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.05, 0.0],
        latents_std=[1.5, 0.8, 1.2, 1.0],
    ).eval()
    vocab = len(tok)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tok),
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "fullatt_block_indexes": [0]},
        hidden_size=16, vocab_size=vocab, vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"], vision_token_id=ids["image_pad"], image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"], bos_token_id=tok.pad_token_id, eos_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed + 1)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    getattr(diffusers, pipeline_class)(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                                       text_encoder=text_encoder, tokenizer=tok,
                                       processor=processor).save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]  # not diffdiff's subclass: a real folder's entry
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def build_tiny_qwen_image_edit(path: str | Path, seed: int = 0) -> Path:
    """Qwen-Image-Edit: Qwen-Image's MMDiT with the edited image's latents as extra tokens, and the
    image seen by the Qwen2.5-VL text encoder's vision tower too (no ``strength``)."""
    return _tiny_qwen_image_edit(Path(path), "QwenImageEditPipeline", seed)


def build_tiny_qwen_image_edit_plus(path: str | Path, seed: int = 0) -> Path:
    """Qwen-Image-Edit-Plus (2509): as Qwen-Image-Edit, taking a list of reference images."""
    return _tiny_qwen_image_edit(Path(path), "QwenImageEditPlusPipeline", seed)
