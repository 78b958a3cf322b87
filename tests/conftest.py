"""Shared test set-up: everything offline, one tiny-model build per test session."""

import os
import tempfile

# Offline before anything imports huggingface_hub / datasets / transformers.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="disabled",
    TOKENIZERS_PARALLELISM="false",
)
# Tiny models are keyed by spec and corpus, so one cache serves every test of the session.
os.environ.setdefault("AUTORULE_CACHE", tempfile.mkdtemp(prefix="autorule-test-cache-"))
os.environ.pop("AUTORULE_ROOT", None)

import pytest  # noqa: E402

from autorule.core.config import compose  # noqa: E402


@pytest.fixture
def make_cfg(tmp_path):
    """Composes the config with ``paths.root`` in a fresh temporary folder."""

    def _make(*overrides: str, root=None):
        return compose([f"paths.root={root or tmp_path / 'out'}", *overrides])

    return _make


@pytest.fixture
def rules_of(monkeypatch):
    """Reads the rule set as a rule-reading stage would (``reader``, registered for the test)."""
    from autorule.core import stage as stage_registry
    from autorule.core.artifacts import StageJob
    from autorule.core.stage import StageSpec
    from autorule.rules.ruleset import load_rules

    spec = StageSpec(name="reader", keys=("seed",), uses_rules=True)
    monkeypatch.setitem(stage_registry._REGISTERED, "reader", spec)

    def _rules_of(cfg) -> list[str]:
        with StageJob(cfg, "reader") as job:
            inputs = {name: job.input(name) for name in job.spec.inputs_for(cfg)}
            return load_rules(cfg, inputs)

    return _rules_of
