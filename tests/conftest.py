"""Shared fixtures: the ``../shared`` data/weights (skipped with a reason when absent) and small settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SRCOMPRESS_SHARED", REPO.parent / "shared"))

# Tests run on 2 CPUs shared with Ray workers; one intra-op thread per process keeps them from thrashing.
torch.set_num_threads(1)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder); absent on this machine")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def set5_dir() -> Path:
    return _need(SHARED / "data" / "Set5")


@pytest.fixture(scope="session")
def t91_dir() -> Path:
    return _need(SHARED / "data" / "T91")


@pytest.fixture(scope="session")
def imdn_x2_weights() -> Path:
    return _need(SHARED / "weights" / "IMDN_x2.pth")
