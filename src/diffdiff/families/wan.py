"""Wan 2.x video-to-video (``WanVideoToVideoPipeline``): a DiT on a causal video VAE's latents.

Wan's VAE keeps the first frame and packs every further 4 frames into one latent frame
(``vae_scale_factor_temporal``), and downsamples space by 8; the transformer patches 2x2, so
frame sizes are multiples of 16. Latents are (B, 16, latent frames, h, w) in the loop and in the
noised reference. The pipeline noises with ``add_noise`` (UniPC, its default) or ``scale_noise``
(flow-matching Euler) and truncates steps with diffusers' integer rule. Text-to-video Wan models
(``WanPipeline``) load as the video-to-video pipeline, sharing their weights.
"""

from __future__ import annotations

from .video import VideoAdapter


class WanAdapter(VideoAdapter):
    name = "wan"
    pipeline_classes = ("WanVideoToVideoPipeline",)
    load_as_classes = {"WanPipeline": "WanVideoToVideoPipeline", "WanVideoToVideoPipeline": "WanVideoToVideoPipeline"}
