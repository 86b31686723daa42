"""The Differential Diffusion rule: which pixels are free at a step, and the blend.

This module is the whole algorithm (Levin & Fried, arXiv 2306.00950). Everything else in diffdiff
is plumbing that feeds it tensors. It knows nothing about models, schedulers or pipelines.

Convention: ``change`` is a tensor in [0, 1] where 0 means "keep this pixel" and 1 means "change it
as much as the run's strength allows". A run executes ``total_steps`` denoising steps (after the
usual img2img truncation by strength). Before step ``step`` (0-based) a pixel is *free* when

    change >= (total_steps - step) / total_steps

so a pixel with change value m follows the model for the last ``m * total_steps`` steps, exactly
as an img2img run at strength ``strength * m`` would. Until it is free its latent is replaced by
the reference (the original image noised to the current step). This is the authors' loop written
in the change polarity: their ``keep > step / total`` is our ``change < (total - step) / total``.
"""

from __future__ import annotations

import torch


def release_threshold(step: int, total_steps: int) -> float:
    """Change value a pixel needs to be free before ``step`` of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps}]")
    return (total_steps - step) / total_steps


def free_mask(change: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
    """Boolean mask of pixels allowed to follow the model before ``step`` (not replaced)."""
    # Multiply rather than divide: change * L is exact for the common map values k / L.
    return change * total_steps > (total_steps - step)


def blend(latents: torch.Tensor, reference: torch.Tensor, change: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
    """Replace not-yet-free pixels of ``latents`` by ``reference`` (the original noised to ``step``).

    ``change`` broadcasts against ``latents`` (typically shape (1, 1, h, w) or (B, 1, h, w)).
    Returns a new tensor; inputs are not modified.
    """
    return torch.where(free_mask(change, step, total_steps), latents, reference.to(latents.dtype))


def quantised_levels(change: torch.Tensor, total_steps: int) -> torch.Tensor:
    """The number of steps each pixel will actually follow the model, in [0, total_steps].

    With L steps the continuous map collapses to L + 1 distinct behaviours (0 = untouched); this
    is what a preview of the map should show.
    """
    steps = torch.arange(total_steps, device=change.device, dtype=change.dtype)
    free_count = (change.unsqueeze(-1) * total_steps > (total_steps - steps)).sum(-1)
    # The last replaced step is the pixel's start, so it follows one step more than it is free.
    return torch.where(change > 0, free_count + 1, torch.zeros_like(free_count))


def effective_strength(change: torch.Tensor, total_steps: int, num_inference_steps: int) -> torch.Tensor:
    """Effective img2img strength per pixel after quantisation: free steps / scheduled steps."""
    return quantised_levels(change, total_steps).to(torch.float32) / float(num_inference_steps)
