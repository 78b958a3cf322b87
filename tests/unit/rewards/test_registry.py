"""What reward terms read enters the artifacts of the stages that use them: a reward model
retrained with other settings, a model folder with other weights, or a new term of one's own never
leaves a grpo or generate artifact "up to date".

Upstream artifacts here are stand-ins committed through the artifact contract (a file of bytes
per stage, no training): the folder names and the manifests' inputs are what is under test, and
they come from the same StageJob a real run uses. tests/e2e/test_reward_inputs.py trains the
tiny reward models and runs tiny GRPO for the same checks."""

import asyncio
import inspect
import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autorule.core.artifacts import (
    StageJob,
    artifact_path,
    config_hash,
    is_up_to_date,
    read_manifest,
)
from autorule.core.config import compose
from autorule.core.stage import get_spec, known_stages
from autorule.rewards import registry
from autorule.rewards.registry import READS, REWARDS, concurrent, named

# One setting of each artifact-reading term's reward model: changing it retrains that model.
# A new term that reads an artifact adds its row (test_every_artifact_term_has_a_stale_test).
RETRAIN = {
    "rm": "rm.learning_rate=1e-4",
    "cloud": "cloud.lm_weight=0.5",
    "feedback_rm": "feedback_rm.protocol=ratings",
}
ARTIFACT_TERMS = sorted(name for name, reads in READS.items() if reads.stage is not None)


def stand_in(cfg, stage: str, content: bytes = b"weights") -> Path:
    """Commits ``stage``'s artifact under ``cfg`` (and, first, each input it lacks): one file of
    ``content``, through the artifact contract."""
    spec = get_spec(stage, cfg)
    for name in spec.inputs_for(cfg):
        input_cfg = spec.config_for_input(cfg, name)
        if read_manifest(artifact_path(input_cfg, spec.stage_of(name))) is None:
            stand_in(input_cfg, spec.stage_of(name))
    with StageJob(cfg, stage) as job:
        if job.done:
            return job.path
        (job.workdir / "model.bin").write_bytes(content)
        return job.commit()


def grpo_config(root, term, *overrides):
    return compose(["stage=grpo", f"paths.root={root}", f"grpo.rewards=[{term}]", *overrides])


def test_every_artifact_term_has_a_stale_test():
    assert ARTIFACT_TERMS == sorted(RETRAIN)


def test_every_registered_term_declares_what_exists():
    """Each term's stage is a stage, its sections and model key are config keys."""
    cfg = compose([])
    known = known_stages()
    assert READS.keys() == REWARDS.keys()
    for name, reads in READS.items():
        assert reads.stage is None or reads.stage in known, name
        assert OmegaConf.select(cfg, f"rewards.{name}") is not None, name
        for section in reads.sections:
            assert OmegaConf.select(cfg, section) is not None, (name, section)
        if reads.model_key is not None:
            assert OmegaConf.select(cfg, reads.model_key, default="absent") != "absent", name


def test_a_term_naming_an_unknown_stage_is_refused_at_registration():
    with pytest.raises(ValueError, match="'rm_v2', which is no stage"):
        registry.register("scored", stage="rm_v2")
    assert "scored" not in REWARDS and "scored" not in READS


@pytest.mark.parametrize("term", ARTIFACT_TERMS)
def test_grpo_names_the_reward_model_it_reads_and_moves_with_it(term, tmp_path):
    stage = READS[term].stage
    cfg = grpo_config(tmp_path, term)
    assert stage in get_spec("grpo", cfg).inputs_for(cfg)
    model = stand_in(cfg, stage)
    path = stand_in(cfg, "grpo")
    recorded = read_manifest(path)["inputs"][stage]
    assert recorded == {"path": str(model), "hash": read_manifest(model)["artifact_hash"]}
    assert is_up_to_date(cfg, "grpo")[0]

    # the reward model trained with another setting: another grpo artifact
    retrained = grpo_config(tmp_path, term, RETRAIN[term])
    assert artifact_path(retrained, stage) != model
    assert artifact_path(retrained, "grpo") != path
    # the same reward model recomputed into other weights: the grpo artifact is out of date
    with StageJob(OmegaConf.merge(cfg, {"force": True}), stage) as job:
        (job.workdir / "model.bin").write_bytes(b"other weights")
        job.commit()
    assert is_up_to_date(cfg, "grpo") == (False, f"upstream '{stage}' was recomputed")


def test_generate_ranked_by_cloud_names_the_cloud_artifact(tmp_path):
    overrides = ["generate.best_of_n=2", "generate.best_of_reward=cloud"]
    cfg = compose(["stage=generate", f"paths.root={tmp_path}", *overrides])
    assert "cloud" in get_spec("generate", cfg).inputs_for(cfg)
    model = stand_in(cfg, "cloud")
    path = stand_in(cfg, "generate")
    assert read_manifest(path)["inputs"]["cloud"]["path"] == str(model)
    moved = compose(["stage=generate", f"paths.root={tmp_path}", *overrides, "cloud.lm_weight=0.5"])
    assert artifact_path(moved, "generate") != path
    # unranked samples do not depend on any reward model
    plain = compose(["stage=generate", f"paths.root={tmp_path}", "cloud.lm_weight=0.5"])
    assert config_hash(plain, "generate") == config_hash(
        compose(["stage=generate", f"paths.root={tmp_path}"]), "generate"
    )


@pytest.mark.parametrize("term", ["cloud", "feedback_rm"])
def test_a_model_folder_is_hashed_by_content_not_path(term, tmp_path):
    folder = tmp_path / "saved" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"first weights")
    key = READS[term].model_key
    assert key == f"rewards.{term}.model"

    def folder_of(model, stage="grpo", *more):
        root = tmp_path / "root"
        if stage == "grpo":
            cfg = grpo_config(root, term, f"{key}={model}", *more)
        else:
            cfg = compose(
                ["stage=generate", f"paths.root={root}", "generate.best_of_n=2"]
                + [f"generate.best_of_reward={term}", f"{key}={model}", *more]
            )
        assert READS[term].stage not in get_spec(stage, cfg).inputs_for(cfg)
        return artifact_path(cfg, stage)

    for stage in ("grpo", "generate"):
        before = folder_of(folder, stage)
        copy = tmp_path / "elsewhere" / "model"
        shutil.copytree(folder, copy)
        assert folder_of(copy, stage) == before  # the same weights elsewhere: the same artifact
        shutil.rmtree(copy.parent)
        (folder / "model.safetensors").write_bytes(b"other weights")
        assert folder_of(folder, stage) != before  # replaced weights: another artifact
        (folder / "model.safetensors").write_bytes(b"first weights")
    with pytest.raises(FileNotFoundError, match=f"{key}=.*is not a folder"):
        folder_of(tmp_path / "nothing")


NEW_TERM = '''
"""A term of one's own: a reward model's score, scaled."""
from autorule.rewards.registry import named, register


@register("scaled_rm", stage="rm")
def scaled_rm(context):
    scale = float(context.cfg.rewards.scaled_rm.scale)
    return named(lambda prompts, completions, **_: [scale] * len(completions), "scaled_rm")
'''


@pytest.fixture
def new_term(tmp_path, monkeypatch):
    """A reward term added with only its module (on the path) and its registry entry; its
    config comes with the run's overrides."""
    (tmp_path / "my_terms.py").write_text(textwrap.dedent(NEW_TERM))
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("my_terms")
    yield "scaled_rm"
    for table in (REWARDS, READS):
        table.pop("scaled_rm", None)
    sys.modules.pop("my_terms", None)


def test_a_new_term_that_reads_an_artifact_needs_no_stage_edit(new_term, tmp_path):
    root = tmp_path / "root"
    config = ["+rewards.scaled_rm.scale=2.0"]
    cfg = grpo_config(root, new_term, *config)
    assert get_spec("grpo", cfg).inputs_for(cfg) == ("preprocess", "sft", "rm")
    model = stand_in(cfg, "rm")
    path = stand_in(cfg, "grpo")
    assert read_manifest(path)["inputs"]["rm"]["path"] == str(model)
    assert read_manifest(path)["config"]["rewards"] == {"scaled_rm": {"scale": 2.0}}
    # its own settings and its reward model's move the artifact
    assert (
        artifact_path(grpo_config(root, new_term, "+rewards.scaled_rm.scale=3.0"), "grpo") != path
    )
    assert artifact_path(grpo_config(root, new_term, *config, RETRAIN["rm"]), "grpo") != path
    # the reward itself, built from the registry
    reward = registry.build_reward_funcs([new_term], registry.RewardContext(cfg))[0]
    assert reward(["p"], ["a", "b"]) == [2.0, 2.0]


REPO = Path(__file__).resolve().parents[3]


def term_problems(name: str, repo: Path = REPO) -> list[str]:
    """What term ``name`` lacks of the files "Adding a reward term" in docs/architecture.md
    lists (its module and registry entry, its config, its docs, its tests)."""
    factory = REWARDS[name]
    package, _, module = factory.__module__.rpartition(".")
    problems = []
    init = (repo / "src" / "autorule" / "rewards" / "__init__.py").read_text()
    if package != "autorule.rewards" or f"    {module},\n" not in init:
        problems.append(f"its module {factory.__module__} is not imported by autorule.rewards")
    if OmegaConf.select(compose([]), f"rewards.{name}") is None:
        problems.append(f"no config section rewards.{name}")
    if f"`{name}`" not in (repo / "docs" / "rewards.md").read_text():
        problems.append(f"docs/rewards.md does not name `{name}`")
    tests = (repo / "tests" / "unit" / "rewards").glob("test_*.py")
    if not any(f'"{name}"' in path.read_text() for path in tests):
        problems.append(f'no test under tests/unit/rewards/ names "{name}"')
    if name in ARTIFACT_TERMS and name not in RETRAIN:
        problems.append("it reads an artifact but has no stale-input row (RETRAIN)")
    return problems


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_term_has_its_files(name):
    assert term_problems(name) == []


def test_a_term_lacking_its_files_is_named(new_term):
    problems = term_problems(new_term)
    # not in the package, no config, no docs (this file names it, so it counts as tested)
    assert len(problems) == 3, problems


def test_a_concurrent_term_is_async_keeps_its_name_and_attributes_and_runs_off_the_loop():
    threads = []

    def length(prompts, completions, **kwargs):
        threads.append(threading.get_ident())
        return [float(len(c)) for c in completions]

    term = named(length, "length")
    term.metrics = lambda: {"length/mean": 1.0}
    wrapped = concurrent(term)
    assert inspect.iscoroutinefunction(wrapped)  # TRL gathers async reward functions
    assert wrapped.__name__ == "length" and wrapped.metrics() == {"length/mean": 1.0}

    async def both():
        return await asyncio.gather(
            wrapped(prompts=["p"], completions=["abc"]), wrapped(prompts=["p"], completions=["ab"])
        )

    assert asyncio.run(both()) == [[3.0], [2.0]]
    assert threading.get_ident() not in threads  # worker threads, not the event loop's
