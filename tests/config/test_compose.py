"""Every config group option and every experiment composes and resolves."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autorule.core.config import CONF_DIR
from autorule.core.stage import META_STAGES, builtin_stages, load

GROUPS = ["stage", "dataset", "model", "profile", "paths", "launcher", "logger"]
# Groups mounted at packages (the LLM backends, once per role): group -> the packages.
MOUNTED = {
    "llm": (
        "extract.llm",
        "judge.llm",
        "rubric.grader",
        "critique.llm",
        "evaluate.judge",
        "feedback.llm",
    )
}


def options(group: str) -> list[str]:
    # Files starting with "_" are shared fragments included by the options, not options.
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


CASES = (
    [(g, o) for g in GROUPS for o in options(g)]
    + [(f"{g}@{p}", o) for g, packages in MOUNTED.items() for p in packages for o in options(g)]
    + [("experiment", o) for o in options("experiment")]
)


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
    if cfg.dataset.get("sources") is not None:  # instruction sources, each read on its own
        from autorule.data.sources import entries, location

        for name, adapter, section in entries(cfg.dataset):
            where = location(cfg.dataset, adapter, section)
            if profile == "tiny":
                assert Path(where).is_dir(), f"the tiny profile reads the bundled copy of {name}"
            else:
                assert where == (section.hub_id or None), name
    elif cfg.dataset.hub_id is None:  # generated (the addition demo): nothing to read
        assert cfg.dataset.path is None and cfg.dataset.local_copy is None
    elif profile == "tiny":
        assert Path(cfg.dataset.path).is_dir(), "the tiny profile reads the bundled copy"
    else:
        assert cfg.dataset.path == cfg.dataset.hub_id


def test_every_stage_has_a_config_file_and_a_spec():
    stage_modules = set(builtin_stages())
    assert set(options("stage")) == stage_modules | set(META_STAGES)
    for name in stage_modules:
        assert load(name).SPEC.name == name


def test_command_line_beats_profile(make_cfg):
    cfg = make_cfg("profile=paper", "model=tiny", "dataset.path=/x")
    assert cfg.model.name_or_path == "tiny" and cfg.dataset.path == "/x"


def test_pipeline_lists_only_known_stages(make_cfg):
    cfg = make_cfg("stage=pipeline")
    assert cfg.pipeline.stages
    for name in cfg.pipeline.stages:
        assert load(name, cfg).SPEC.name == name


def _keys_without_comment(path: Path) -> list[str]:
    """Keys of a YAML file with no comment on their line or on the line just above."""
    import yaml

    lines = path.read_text().splitlines()
    missing: list[str] = []

    def walk(node, skip: bool) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value
                hidden = skip or name in ("hydra", "defaults")
                row = key.start_mark.line
                above = lines[row - 1].strip() if row else ""
                if not hidden and "#" not in lines[row] and not above.startswith("#"):
                    missing.append(f"{path.relative_to(CONF_DIR)}:{row + 1}: {name}")
                walk(value, hidden)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, skip)

    walk(yaml.compose(path.read_text()), False)
    return missing


def test_every_config_key_has_a_comment():
    """Config is the interface: each key a researcher can turn says what it does."""
    missing = [m for p in sorted(CONF_DIR.rglob("*.yaml")) for m in _keys_without_comment(p)]
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


def test_judge_settings_per_profile(make_cfg):
    """The paper's judge (a served Llama-3-8B-Instruct, greedy, up to 1,024 new tokens, one
    generated verdict per pair); the tiny profile's local random model reads log-probabilities."""
    paper, tiny = make_cfg("profile=paper"), make_cfg()
    assert paper.judge.llm._target_.endswith("OpenAICompatLLM")
    assert paper.judge.llm.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (paper.judge.llm.temperature, paper.judge.llm.max_tokens) == (0.0, 1024)
    assert paper.judge.mode == "generate" and paper.judge.threshold == 0.5
    assert tiny.judge.llm._target_.endswith("HFLLM") and tiny.judge.mode == "logprob"
    assert (tiny.rewards.rules.offset, tiny.rewards.rules.scale) == (0.75, 10.0)
    lp = tiny.rewards.length_penalty
    assert (lp.coef, lp.norm, lp.offset) == (0.5, 300, 0.5)
    # The command line picks another backend for the judge alone.
    assert make_cfg("llm@judge.llm=vllm").judge.llm._target_.endswith("VLLMOfflineLLM")
    assert make_cfg("llm@judge.llm=vllm").extract.llm._target_.endswith("HFLLM")
