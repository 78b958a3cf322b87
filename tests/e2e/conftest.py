"""Shared setup of the end-to-end tests: composing configs under one temporary root."""

import pytest

from autorule.config import compose


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One tiny-model build shared by every end-to-end test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, tiny_cache):
    """compose() with paths under this test's temporary folder."""

    def make(*overrides, root=None):
        return compose([*overrides, f"paths.root={root or tmp_path}", f"paths.cache={tiny_cache}"])

    return make
