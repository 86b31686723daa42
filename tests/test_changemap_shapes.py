"""Array maps keep their H x W when H or W is 1 (a fan on a 1-pixel-tall image used to fail)."""

from __future__ import annotations

import numpy as np
import pytest

from diffdiff.changemap import map_to_array
from diffdiff.errors import DiffDiffError


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((1, 5), (1, 5)), ((5, 1), (5, 1)), ((1, 1), (1, 1)), ((1, 1, 4, 6), (4, 6)), ((1, 4, 6), (4, 6)),
     ((4, 6, 1), (4, 6)), ((1, 1, 1, 6), (1, 6)), ((4, 6, 3), (4, 6))],
)
def test_array_map_shapes(shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    arr = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    out = map_to_array(arr)
    assert out.shape == expected
    if len(shape) == 2 or shape[-1] != 3:
        assert np.allclose(out.ravel(), arr.ravel())  # same values, only axes of size 1 dropped


@pytest.mark.parametrize("shape", [(5,), (2, 4, 6), (3, 4, 6, 2)])
def test_array_maps_that_are_not_2d_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(DiffDiffError, match="2-D"):
        map_to_array(np.zeros(shape, np.float32))
