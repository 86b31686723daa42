"""CogVideoX video-to-video (``CogVideoXVideoToVideoPipeline``): a DiT on a causal 3-D VAE.

The VAE keeps the first frame and packs every further 4 frames into one latent frame, but its
decoder halves and doubles time in two stages that keep the first frame alone only for an odd
number of latent frames: 1 + 8k input frames (1, 9, 17, ... 49) decode back to themselves, so
clips are padded to that. Latents are (B, F, C, h, w) in the loop and in the noised reference,
so the map is (1, latent frames, 1, h, w). CogVideoX 1.5 (temporal patches, ``patch_size_t``)
needs an even number of latent frames, which its video-to-video decoder cannot give back, and
is refused. Text-to-video CogVideoX models (``CogVideoXPipeline``) load as video-to-video.
"""

from __future__ import annotations

from typing import Any

from ..errors import DiffDiffError
from .video import VideoAdapter


class CogVideoXAdapter(VideoAdapter):
    name = "cogvideox"
    pipeline_classes = ("CogVideoXVideoToVideoPipeline",)
    load_as_classes = {"CogVideoXPipeline": "CogVideoXVideoToVideoPipeline",
                       "CogVideoXVideoToVideoPipeline": "CogVideoXVideoToVideoPipeline"}
    reference_frames_first = True

    def __init__(self, pipe: Any, **parts: Any) -> None:
        super().__init__(pipe, **parts)
        if getattr(pipe.transformer.config, "patch_size_t", None):
            raise DiffDiffError("CogVideoX 1.5 (temporal patches, patch_size_t) has no video-to-video form diffdiff "
                                "can drive: its latent frame count must be even, which its decoder cannot return")

    def run_frames(self, count: int) -> int:
        """1 + 8k frames: an odd number of latent frames, which the decoder returns frame for frame."""
        t = self.temporal_factor()
        latent = (count - 1 + t - 1) // t + 1
        latent += 1 - latent % 2
        return 1 + (latent - 1) * t
