"""Train the micro model: one command, reproducible, resumable.

    python -m diffdiff.micro.train --out DIR [--resume] [--vae-steps N] [--unet-steps N]

Owns the micro model's architecture (a Stable Diffusion pipeline at small size: a 3-level
``AutoencoderKL`` with 4x down to 16x16x4 latents, a ``UNet2DConditionModel``, a 2-layer CLIP text
encoder with a word-level tokenizer for the shapes grammar, a DDIM scheduler with SD's training
schedule), its training loop and its export in diffusers' ``save_pretrained`` layout.

Stages, each checkpointed in ``DIR`` and skipped when done: ``vae`` (trained alone on rendered
images), ``latents`` (every training image encoded once), ``unet`` (UNet and text encoder trained
jointly on the cached latents with 10 % caption dropout for classifier-free guidance, EMA weights
exported). Every step draws its batch and noise from generators seeded by (seed, stage, step), so a
resumed run takes the same steps as an uninterrupted one. ``DIR/model`` is refreshed at every
checkpoint (fp32) with a ``provenance.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import shapes

_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
#: Tokens per prompt: the grammar needs at most 10 (with start and end); the rest is room for
#: out-of-grammar text, which falls back to characters.
MAX_TOKENS = 32
CHUNK = 4000
_STAGE_IDS = {"vae": 1, "unet": 2}


# --- architecture ---------------------------------------------------------------------------------

def write_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer whose merges turn each grammar word into one token (other text: characters)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for ch in _CHARS:
        add(ch)
        add(ch + "</w>")
    merges: list[str] = []
    for word in shapes.vocabulary():
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            merge = f"{current} {part}"
            if merge not in merges:
                merges.append(merge)
            current += part
            add(current)
    add("<|startoftext|>")
    add("<|endoftext|>")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                            model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")
    for word in shapes.vocabulary():
        if len(tok.tokenize(word)) != 1:
            raise RuntimeError(f"tokenizer splits grammar word {word!r}")
    tok.save_pretrained(folder)
    return tok


def make_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64, 64), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, norm_num_groups=16, layers_per_block=1, sample_size=shapes.SIZE,
    )


def make_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg)


def make_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=shapes.SIZE // 4, in_channels=4, out_channels=4,
        block_out_channels=(48, 96, 96), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16,
    )


def make_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# --- data -----------------------------------------------------------------------------------------

def _images(out: Path, n: int) -> np.ndarray:
    """uint8 (n, 3, 64, 64) training images for seeds 0..n-1, cached in chunks under ``out``."""
    parts = []
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        f = out / f"images-{shapes.GENERATOR_VERSION}-{start}-{stop}.npy"
        if not f.exists():
            arr, _ = shapes.batch(range(start, stop))
            _atomic_save_npy(f, arr.transpose(0, 3, 1, 2).copy())
        parts.append(np.load(f))
    return np.concatenate(parts)


def _to_unit(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).float() / 127.5 - 1.0


def heldout_psnr(vae: Any, n: int = 256) -> float:
    """Mean PSNR (dB) of the VAE round trip (latent mean) on held-out images."""
    arr, _ = shapes.batch(range(shapes.HELDOUT_START, shapes.HELDOUT_START + n))
    x = _to_unit(arr.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 64]).latent_dist.mean).sample for i in range(0, len(x), 64)])
    ref = (x + 1) * 127.5
    out = ((rec.clamp(-1, 1) + 1) * 127.5).round()
    mse = ((out - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(255.0 ** 2 / mse)).mean())


# --- checkpoint helpers ---------------------------------------------------------------------------

def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(out: Path, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as fh:
        fh.write(line + "\n")


def _lr(step: int, total: int, base: float, warmup: int, start: int) -> float:
    """Linear warm-up, constant, then cosine from ``start`` down to 10 % at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    if step < start:
        return base
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - start) / max(total - start, 1))))


# --- stages ---------------------------------------------------------------------------------------

def train_vae(out: Path, args: argparse.Namespace, state: dict) -> Any:
    ckpt = out / "vae.pt"
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        step = saved["step"]
    if step >= args.vae_steps:
        vae.eval()
        if state.get("vae_psnr_step") != step:  # e.g. stopped at a checkpoint between two evaluations
            state["vae_psnr_128"], state["vae_psnr_step"] = heldout_psnr(vae, args.psnr_images), step
            _save_state(out, state)
        return vae
    images = _images(out, args.vae_images)
    torch.manual_seed(args.seed)
    vae.train()
    last_save, t0, losses = time.time(), time.time(), []
    while step < args.vae_steps:
        rng = np.random.default_rng([args.seed, _STAGE_IDS["vae"], step])
        batch = images[rng.integers(len(images), size=args.vae_batch)]
        if step < int(args.vae_steps * args.vae_crop_until):
            # 32x32 crops: a quarter of the work per step, so four times the updates on a shared CPU;
            # the model is convolutional (held-out PSNR is measured on whole frames).
            c = args.vae_crop
            oy, ox = rng.integers(0, shapes.SIZE - c + 1, size=2)
            batch = batch[:, :, oy:oy + c, ox:ox + c]
        x = _to_unit(np.ascontiguousarray(batch))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.vae_steps, args.vae_lr, 50, args.vae_steps - args.vae_decay_steps)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = dist.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            _log(out, f"vae step {step}/{args.vae_steps} loss {np.mean(losses[-50:]):.5f} "
                      f"{(time.time() - t0) / len(losses):.2f}s/step")
        if step % 500 == 0 or step == args.vae_steps:
            vae.eval()
            psnr = heldout_psnr(vae, args.psnr_images)
            vae.train()
            _log(out, f"vae step {step} held-out PSNR {psnr:.2f} dB")
            state["vae_psnr_128"], state["vae_psnr_step"] = psnr, step
        if time.time() - last_save > args.save_every or step == args.vae_steps:
            _atomic_torch_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            state["vae_steps_done"] = step
            state["vae_final_loss"] = float(np.mean(losses[-50:]))
            state["wall_s"] = state.get("wall_s", 0.0) + time.time() - last_save
            _save_state(out, state)
            last_save = time.time()
    return vae.eval()


def encode_latents(out: Path, args: argparse.Namespace, vae: Any, state: dict) -> tuple[torch.Tensor, float]:
    f = out / "latents.pt"
    if f.exists():
        saved = torch.load(f, weights_only=False)
        if saved["n"] == args.n_train:
            return saved["latents"], saved["scale"]
    t0 = time.time()
    images = _images(out, args.n_train)
    parts = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            parts.append(vae.encode(_to_unit(images[i:i + 256])).latent_dist.mean)
    latents = torch.cat(parts)
    scale = float(1.0 / latents.std())
    _atomic_torch_save({"latents": latents.half(), "scale": scale, "n": args.n_train}, f)
    state["latent_scale"] = scale
    state["wall_s"] = state.get("wall_s", 0.0) + time.time() - t0
    _save_state(out, state)
    _log(out, f"latents {tuple(latents.shape)} scale {scale:.4f} in {time.time() - t0:.0f}s")
    return latents.half(), scale


def unet_draw(seed: int, step: int, n: int, batch: int) -> tuple[np.ndarray, np.ndarray, torch.Generator]:
    """Step ``step``'s batch indices, caption-dropout flags and noise generator: a function of the
    seed and the step only, so a resumed run draws exactly what an uninterrupted one does."""
    rng = np.random.default_rng([seed, _STAGE_IDS["unet"], step])
    idx = rng.integers(n, size=batch)
    drop = rng.random(batch) < 0.1
    return idx, drop, torch.Generator().manual_seed(int(rng.integers(2**31)))


def train_unet(out: Path, args: argparse.Namespace, vae: Any, latents: torch.Tensor, scale: float,
               state: dict) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    tok = write_tokenizer(out / "tokenizer")
    torch.manual_seed(args.seed + 1)
    unet, text = make_unet(), make_text_encoder(len(tok))
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    ema_unet = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, power=2 / 3)
    ema_text = EMAModel(text.parameters(), decay=0.999, use_ema_warmup=True, power=2 / 3)
    ckpt = out / "unet.pt"
    step = 0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(saved["unet"])
        text.load_state_dict(saved["text"])
        opt.load_state_dict(saved["opt"])
        ema_unet.load_state_dict(saved["ema_unet"])
        ema_text.load_state_dict(saved["ema_text"])
        step = saved["step"]
    noise_sched = DDPMScheduler.from_config(make_scheduler().config)
    captions = [shapes.random_scene(s).caption for s in range(args.n_train)]
    ids = tok(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    unet.train()
    text.train()
    last_save, t0, losses, n_timed = time.time(), time.time(), [], 0
    while step < args.unet_steps:
        idx, drop, gen = unet_draw(args.seed, step, len(latents), args.unet_batch)
        z0 = latents[idx].float() * scale
        tokens = ids[idx].clone()
        tokens[torch.from_numpy(drop)] = empty
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.unet_steps, args.unet_lr, 100, args.unet_steps)  # constant after warm-up
        cond = text(tokens)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        snr = compute_snr(noise_sched, t)
        weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
        loss = (weight * ((pred - noise) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text.parameters())
        step += 1
        n_timed += 1
        losses.append(loss.item())
        if step % 50 == 0:
            _log(out, f"unet step {step}/{args.unet_steps} loss {np.mean(losses[-50:]):.5f} "
                      f"{(time.time() - t0) / n_timed:.2f}s/step")
        if time.time() - last_save > args.save_every or step == args.unet_steps:
            _atomic_torch_save({"unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                                "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                                "step": step}, ckpt)
            state["unet_steps_done"] = step
            state["unet_final_loss"] = float(np.mean(losses[-200:]))
            state["wall_s"] = state.get("wall_s", 0.0) + time.time() - last_save
            _save_state(out, state)
            export(out / "model", vae, unet, text, tok, scale, ema_unet, ema_text, state, args)
            _log(out, f"checkpoint at unet step {step}; exported {out / 'model'}")
            last_save = time.time()
    export(out / "model", vae, unet, text, tok, scale, ema_unet, ema_text, state, args)


# --- export ---------------------------------------------------------------------------------------

def export(folder: Path, vae: Any, unet: Any, text: Any, tok: Any, scale: float, ema_unet: Any, ema_text: Any,
           state: dict, args: argparse.Namespace) -> None:
    """Write the pipeline (EMA weights, fp32: 17 MB, and fp32 loads anywhere) to ``folder`` atomically (a sibling temp folder, then rename)."""
    import copy

    from diffusers import StableDiffusionPipeline

    vae_out, unet_out, text_out = copy.deepcopy(vae).eval(), copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    ema_unet.copy_to(unet_out.parameters())
    ema_text.copy_to(text_out.parameters())
    vae_out.register_to_config(scaling_factor=scale)
    pipe = StableDiffusionPipeline(vae=vae_out, text_encoder=text_out, tokenizer=tok, unet=unet_out, scheduler=make_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    (tmp / "provenance.json").write_text(json.dumps(provenance(state, args), indent=2) + "\n")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def provenance(state: dict, args: argparse.Namespace) -> dict:
    return {
        "generator": "diffdiff.micro.shapes",
        "generator_version": shapes.GENERATOR_VERSION,
        "training_seeds": f"0..{args.n_train - 1} (VAE: 0..{args.vae_images - 1})",
        "heldout_seeds_start": shapes.HELDOUT_START,
        "seed": args.seed,
        "vae_steps": state.get("vae_steps_done"),
        "vae_batch": args.vae_batch,
        "vae_lr": f"{args.vae_lr} constant, cosine to 10 % over the last {args.vae_decay_steps} steps",
        "vae_crop": f"{args.vae_crop}px for the first {args.vae_crop_until:.0%} of steps",
        "vae_final_loss": state.get("vae_final_loss"),
        "vae_heldout_psnr_db": state.get("vae_psnr_128"),
        "unet_steps": state.get("unet_steps_done"),
        "unet_batch": args.unet_batch,
        "unet_final_loss": state.get("unet_final_loss"),
        "latent_scale": state.get("latent_scale"),
        "caption_dropout": 0.1,
        "wall_time_s": round(state.get("wall_s", 0.0), 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "command": "python -m diffdiff.micro.train " + " ".join(state.get("argv", [])),
    }


def _save_state(out: Path, state: dict) -> None:
    tmp = out / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / "state.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the diffdiff micro model on the shapes world.")
    parser.add_argument("--out", type=Path, required=True, help="working folder (checkpoints, logs, model/)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=16000)
    parser.add_argument("--vae-images", type=int, default=8000)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-decay-steps", type=int, default=400, help="last VAE steps with a cosine LR decay")
    parser.add_argument("--vae-crop", type=int, default=32, help="crop size for the first part of VAE training")
    parser.add_argument("--vae-crop-until", type=float, default=1.0, help="fraction of VAE steps on crops")
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=6e-4)
    parser.add_argument("--psnr-images", type=int, default=128, help="held-out images for the VAE's PSNR checks")
    parser.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    parser.add_argument("--stop-after", choices=["vae", "latents", "unet"], default="unet")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    if out.exists() and any(out.glob("*.pt")) and not args.resume:
        print(f"error: {out} already holds checkpoints; pass --resume to continue or choose another --out",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state["argv"] = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    _log(out, f"start: {' '.join(state['argv'])}")
    vae = train_vae(out, args, state)
    for p in vae.parameters():
        p.requires_grad_(False)
    if args.stop_after == "vae":
        return 0
    latents, scale = encode_latents(out, args, vae, state)
    if args.stop_after == "latents":
        return 0
    train_unet(out, args, vae, latents, scale, state)
    _log(out, "done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
