"""Shared setup of the end-to-end tests."""

import pytest

from autorule.core.config import compose


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """preprocess -> sft -> rm on the tiny profile, once per session, under one root."""
    from autorule.stages import preprocess, rm, sft

    root = tmp_path_factory.mktemp("root")
    cfg = compose(["stage=pipeline", f"paths.root={root}"])
    return {"preprocess": preprocess.run(cfg), "sft": sft.run(cfg), "rm": rm.run(cfg)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A root holding the tiny UltraFeedback preprocess artifact, one per test module (a module
    may define its own ``root`` with more in it)."""
    from autorule.stages import preprocess

    folder = tmp_path_factory.mktemp("root")
    preprocess.run(compose(["stage=preprocess", f"paths.root={folder}"]))
    return folder
