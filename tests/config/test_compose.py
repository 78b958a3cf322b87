"""Every config group option and every experiment composes and resolves."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autorule.config import CONF_DIR
from autorule.stages import META_STAGES, SPECS

GROUPS = ["stage", "dataset", "model", "profile", "paths", "llm", "launcher", "logger"]


def options(group: str) -> list[str]:
    # Files starting with "_" are shared fragments included by the options, not options.
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


CASES = [(g, o) for g in GROUPS for o in options(g)] + [
    ("experiment", o) for o in options("experiment")
]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_resolves(make_cfg, group, option):
    override = f"{group}={option}"
    cfg = make_cfg(override)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if group == "stage":
        assert cfg.stage == option


@pytest.mark.parametrize("profile", options("profile"))
@pytest.mark.parametrize("dataset", options("dataset"))
def test_profile_by_dataset(make_cfg, profile, dataset):
    cfg = make_cfg(f"profile={profile}", f"dataset={dataset}")
    assert cfg.profile.name == profile
    if profile == "tiny":
        assert cfg.model.name_or_path == "tiny"
        assert Path(cfg.dataset.path).is_dir(), "the tiny profile reads the bundled copy"
    else:
        assert cfg.dataset.path == cfg.dataset.hub_id


def test_every_stage_has_a_config_file_and_a_spec():
    stage_files = set(options("stage"))
    assert stage_files == set(SPECS) | set(META_STAGES)


def test_command_line_beats_profile(make_cfg):
    cfg = make_cfg("profile=paper", "model=tiny", "dataset.path=/x")
    assert cfg.model.name_or_path == "tiny" and cfg.dataset.path == "/x"


def test_pipeline_lists_only_known_stages(make_cfg):
    cfg = make_cfg("stage=pipeline")
    assert cfg.pipeline.stages and set(cfg.pipeline.stages) <= set(SPECS)
