"""Shared fixtures: tiny random-weight pipelines saved to disk once per test session.

Model hubs are unreachable, so every model is built from a config in code
(:mod:`diffdiff.testing`), saved with ``save_pretrained`` and loaded back through the real
``Editor.from_pretrained(path)`` code path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Busy-waiting OpenMP threads make torch 10-30x slower when other processes share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from diffdiff import Editor  # noqa: E402
from diffdiff.cli.common import quiet_third_party  # noqa: E402
from diffdiff.testing import build_tiny_sd, build_tiny_sdxl, gradient_map, sample_image  # noqa: E402
from diffdiff.testing_addons import build_tiny_controlnet, build_tiny_ip_adapter, save_random_lora  # noqa: E402

# The tiny models are overhead-bound: one thread is as fast and does not fight other processes.
torch.set_num_threads(1)
quiet_third_party(True)
warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


@pytest.fixture(scope="module", autouse=True)
def _threads_back_after_each_module() -> Iterator[None]:
    """A module that changes torch's thread count (the micro model runs on 2) gives it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_sd_path(models_dir: Path) -> Path:
    return build_tiny_sd(models_dir / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_path(models_dir: Path) -> Path:
    return build_tiny_sdxl(models_dir / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_refiner_path(models_dir: Path) -> Path:
    return build_tiny_sdxl(models_dir / "tiny-sdxl-refiner", refiner=True)


# The tiny add-ons several test modules load (built once per session; nothing writes into them).
@pytest.fixture(scope="session")
def controlnet_path(models_dir: Path, tiny_sd_path: Path) -> Path:
    return build_tiny_controlnet(models_dir / "controlnet", tiny_sd_path)


@pytest.fixture(scope="session")
def union_controlnet_path(models_dir: Path, tiny_sdxl_path: Path) -> Path:
    """An SDXL ControlNet Union (6 control types)."""
    return build_tiny_controlnet(models_dir / "controlnet-union", tiny_sdxl_path, seed=2, union=True)


@pytest.fixture(scope="session")
def lora_file(models_dir: Path, tiny_sd_path: Path) -> Path:
    return save_random_lora(tiny_sd_path, models_dir / "lora")


@pytest.fixture(scope="session")
def ip_weights(models_dir: Path, tiny_sd_path: Path) -> Path:
    return build_tiny_ip_adapter(models_dir / "ip", tiny_sd_path)


@pytest.fixture(scope="session")
def sd_editor(tiny_sd_path: Path) -> Editor:
    return Editor.from_pretrained(tiny_sd_path, progress=False)


@pytest.fixture(scope="session")
def sdxl_editor(tiny_sdxl_path: Path) -> Editor:
    return Editor.from_pretrained(tiny_sdxl_path, progress=False)


@pytest.fixture
def image64():
    return sample_image(64, 64, seed=3)


@pytest.fixture
def ramp64():
    """Left-to-right 0..255 ramp (0 = keep at the left edge, 1 = change at the right)."""
    return gradient_map(64, 64)
