"""The pure threshold-and-blend rule (diffdiff.core), checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from diffdiff.core import blend, effective_strength, free_mask, quantised_levels, release_threshold


def test_release_threshold_schedule() -> None:
    assert [release_threshold(i, 4) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError):
        release_threshold(0, 0)
    with pytest.raises(ValueError):
        release_threshold(5, 4)


def test_free_mask_by_hand() -> None:
    # Free before step i iff m * N > N - i; enumerate by hand for N = 4. The last step at which a
    # pixel is replaced is its starting point, so it follows the model for ceil(m * N) steps.
    change = torch.tensor([0.0, 0.25, 0.3, 0.5, 0.99, 1.0])
    free = torch.stack([free_mask(change, i, 4) for i in range(4)])  # (steps, pixels)
    assert free[:, 0].tolist() == [False, False, False, False]  # map 0: never free
    assert free[:, 1].tolist() == [False, False, False, False]  # 0.25: starts at step 3, 1 step
    assert free[:, 2].tolist() == [False, False, False, True]  # 0.3: starts at step 2, 2 steps
    assert free[:, 3].tolist() == [False, False, False, True]  # 0.5: 2 steps
    assert free[:, 4].tolist() == [False, True, True, True]  # 0.99: 4 steps
    assert free[:, 5].tolist() == [False, True, True, True]  # map 1: starts at step 0
    assert quantised_levels(change, 4).tolist() == [0, 1, 2, 2, 4, 4]


def test_matches_authors_keep_rule_off_the_boundaries() -> None:
    # Authors: keep = map_keep > arange(L) / L (white = keep). Ours is the same in change terms.
    torch.manual_seed(0)
    total = 7
    change = torch.rand(10_000)
    # keep values a safe distance from any k / L, where float rounding could flip either side
    grid = torch.arange(total + 1) / total
    change = change[(change[:, None] - grid[None]).abs().min(1).values > 1e-4]
    keep = 1 - change
    for i in range(total):
        authors_replace = keep > i / total
        assert torch.equal(~free_mask(change, i, total), authors_replace)


def test_blend_replaces_only_held_pixels() -> None:
    latents = torch.full((2, 4, 1, 3), 5.0)
    reference = torch.full((2, 4, 1, 3), -1.0)
    change = torch.tensor([0.5, 0.75, 1.0]).view(1, 1, 1, 3)
    out = blend(latents, reference, change, step=1, total_steps=2)  # free iff change > 0.5
    assert out[..., 0].unique().tolist() == [-1.0]
    assert out[..., 1].unique().tolist() == [5.0]
    assert out[..., 2].unique().tolist() == [5.0]
    # inputs untouched
    assert latents.unique().tolist() == [5.0] and reference.unique().tolist() == [-1.0]


def test_quantised_levels_has_n_plus_one_values() -> None:
    change = torch.linspace(0, 1, 1001)
    levels = quantised_levels(change, 5)
    assert levels.unique().tolist() == [0, 1, 2, 3, 4, 5]
    assert levels[0] == 0 and levels[-1] == 5
    assert torch.all(levels[1:] >= levels[:-1])  # monotone in the map value
    eff = effective_strength(change, total_steps=5, num_inference_steps=10)  # strength 0.5 run
    assert eff.max().item() == pytest.approx(0.5)
