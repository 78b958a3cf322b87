"""Shared setup of the end-to-end tests: configs composed under temporary roots."""

import pytest

from autorule.config import compose


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One tiny-model build shared by every end-to-end test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, tiny_cache):
    """compose() with paths under this test's temporary folder."""

    def make(*overrides):
        return compose([*overrides, f"paths.root={tmp_path}", f"paths.cache={tiny_cache}"])

    return make


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_cache):
    """preprocess -> sft -> rm on the tiny profile, once per session, under one root."""
    from autorule.stages import preprocess, rm, sft

    root = tmp_path_factory.mktemp("root")
    cfg = compose(["stage=pipeline", f"paths.root={root}", f"paths.cache={tiny_cache}"])
    return {"preprocess": preprocess.run(cfg), "sft": sft.run(cfg), "rm": rm.run(cfg)}
