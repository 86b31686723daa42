"""AnimateDiff video-to-video (``AnimateDiffVideoToVideoPipeline``): SD 1.5 with a motion adapter.

The VAE is SD's image VAE applied frame by frame: no temporal compression, so every frame is a
latent frame of its own and the map is resampled in space only. The pipeline noises its
reference as (B, F, C, h, w) and loops on (B, C, F, h, w); the hook transposes around the blend.
Text-to-video AnimateDiff models (``AnimateDiffPipeline``) load as the video-to-video pipeline.
"""

from __future__ import annotations

from .video import VideoAdapter


class AnimateDiffAdapter(VideoAdapter):
    name = "animatediff"
    pipeline_classes = ("AnimateDiffVideoToVideoPipeline",)
    load_as_classes = {"AnimateDiffPipeline": "AnimateDiffVideoToVideoPipeline",
                       "AnimateDiffVideoToVideoPipeline": "AnimateDiffVideoToVideoPipeline"}
    temporal = 1
    first_frame_alone = False
    reference_frames_first = True
    loop_transposed = True

    def temporal_factor(self) -> int:
        return 1
