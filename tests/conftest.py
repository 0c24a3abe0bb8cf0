"""Fixtures shared by the test packages."""

from __future__ import annotations

import pytest

from helpers import tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A pretrained directory holding a tiny any-size (axial) model."""
    path = tmp_path_factory.mktemp("model")
    tiny("tiny-axial").save_pretrained(path)
    return path
