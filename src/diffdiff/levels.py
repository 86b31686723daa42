"""Step counts and map levels: how many steps a run executes, and which map value gives k of them.

Two rules live here and nowhere else:

* the executed-steps rule of diffusers' img2img truncation (``int(n * s)`` for DDPM-family
  pipelines; flow-matching pipelines truncate with a float product, so ``10 * 0.7`` runs 8 steps);
* the inverse of :func:`diffdiff.core.quantised_levels`: a map value that makes a pixel follow the
  model for exactly ``k`` of ``total`` steps (the strength fan's bands, few-step rounding).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .core import quantised_levels


def executed_steps(num_inference_steps: int, strength: float) -> int:
    """Denoising steps an img2img run executes (diffusers' ``get_timesteps`` rule)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def flow_executed_steps(num_inference_steps: int, strength: float) -> int:
    """The same for SD3/Flux-style pipelines, which truncate with a float product: mirrored exactly."""
    init = min(num_inference_steps * strength, num_inference_steps)
    return num_inference_steps - int(max(num_inference_steps - init, 0))


@lru_cache(maxsize=256)
def level_value(k: int, total: int) -> float:
    """A map value that :func:`diffdiff.core.quantised_levels` turns into exactly ``k`` of ``total`` steps.

    Found by sampling the core rule (so it follows the rule's tie convention) and taking the middle
    of the interval of values giving ``k``: float round-off in resizing cannot push it to a
    neighbouring level. ``k <= 0`` gives exactly 0, ``k >= total`` exactly 1.
    """
    if k <= 0 or total <= 0:
        return 0.0
    if k >= total:
        return 1.0
    grid = torch.linspace(0.0, 1.0, 16 * total + 1, dtype=torch.float64)
    hits = grid[quantised_levels(grid, total) == k]
    if hits.numel() == 0:  # pragma: no cover - the core rule reaches every level
        return k / total
    return float((hits.min() + hits.max()) / 2)


def round_to_levels(change: torch.Tensor, total_steps: int) -> torch.Tensor:
    """Snap a change map so each pixel follows the model for ``round(m * N)`` of the N steps.

    :mod:`diffdiff.core` quantises a value m to a whole number of followed steps (ceil(m * N) with
    its strict threshold), so with the 1-4 steps of Turbo, schnell or LCM a value of 0.3 behaves
    like 0.5 at N = 4. Nearest-level rounding halves the worst error and removes the bias. Each
    level j is replaced by :func:`level_value` (j, N). Zeros stay zero.
    """
    if total_steps <= 0:
        return change
    table = torch.tensor([level_value(j, total_steps) for j in range(total_steps + 1)],
                         dtype=change.dtype, device=change.device)
    levels = torch.floor(change * total_steps + 0.5).clamp(0, total_steps).long()
    return table[levels]
