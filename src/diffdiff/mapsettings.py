"""The automatic change map's default settings: their one home, importable without torch.

:mod:`diffdiff.automap` computes the map with them; the editor, the CLI (whose ``--help`` shows
them), the REST API, batch rows and :mod:`diffdiff.diffedit` take their defaults from here.

They were picked by what localises best on the trained micro model (benchmarks/QUALITY.md,
"Automatic map"): the prompts compared at a light noise level, no smoothing, and white at 0.8x the
map's peak (never below 3x its mean), so that ``map > 0.5`` (diffedit's threshold) marks the cells
above 40 % of the peak and above 1.5x the mean: diffusers' DiffEdit rule (its ratio 3) less the
cells far below the peak.
"""

from __future__ import annotations

#: Noise level (an img2img strength) the two prompts' predictions are compared at.
MAP_ENCODE_STRENGTH = 0.3
#: Gaussian smoothing of the difference, in latent cells (0: none).
MAP_SMOOTH = 0.0
#: White at this fraction of the map's peak ...
MAP_PEAK_RATIO = 0.8
#: ... but never below this multiple of its mean.
MAP_CLAMP_RATIO = 3.0
#: Noise draws averaged.
MAP_NUM_MAPS = 10
