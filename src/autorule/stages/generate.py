"""Stage ``generate``: a model's responses to a prompt set, with the sampling settings beside them.

    python -m autorule stage=generate                                  # grpo vs sft, test_subset
    python -m autorule stage=generate generate.model=sft generate.reference=base
    python -m autorule stage=generate generate.prompts=alpaca_eval generate.reference=null
    python -m autorule stage=generate generate.prompts=/data/mt_bench/question.jsonl
    python -m autorule stage=generate generate.best_of_n=16 generate.best_of_reward=rm

``generate.model`` (and ``generate.reference``) name a model four ways: a stage whose artifact holds
``model/`` (``sft``, ``grpo``: that artifact becomes an input), ``base`` (``model.name_or_path``),
a model folder, or a hub id. The reference is sampled on the same prompts with the same settings,
so the evaluate stage can compare the two pair by pair (its win rate); ``generate.checkpoints``
adds every checkpoint the model's stage kept, for the reward-hacking curves.

Sampling runs on vLLM when it is installed and a GPU is present, else on ``transformers``
(:mod:`autorule.evaluation.generation`); prompts are rendered as the policy was trained
(``preprocess.prompt_format``: the paper's plain ``<|user|>{prompt}<|assistant|>``, or the
tokenizer's chat template). With ``generate.best_of_n=N`` the model draws N answers per prompt and
keeps the one the reward term ``generate.best_of_reward`` of :mod:`autorule.rewards` scores highest
(every candidate and score goes to ``candidates.jsonl``); the reference is sampled once. With
``generate.best_of_reward=null`` the N answers are kept unranked (``candidates.jsonl``, scores
null; ``responses.jsonl`` holds each prompt's first), e.g. as responses to annotate in the
feedback study.

Artifact: ``responses.jsonl`` (the model), ``reference.jsonl``, ``checkpoints/step-<N>.jsonl``; one
row per prompt: ``id``, ``turns`` (the user turns), ``responses`` (one answer per turn),
``output_tokens``, ``finished`` (false: cut by ``max_new_tokens``) and the prompt set's own fields
(``dataset``, ``category``). ``sampling.json`` holds the sampling settings, the backend that ran,
the models and the prompt set.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.core.artifacts import StageJob
from autorule.core.config import ConfigError, check_choice, check_number, check_paths
from autorule.core.files import write_json_redacted, write_jsonl
from autorule.core.hashing import file_sha256
from autorule.core.stage import StageSpec
from autorule.data.fingerprints import folder_identity
from autorule.evaluation import prompt_sets
from autorule.evaluation.generation import (
    BACKENDS,
    DTYPES,
    Conversation,
    Generator,
    Sample,
    Sampling,
    best_index,
)
from autorule.evaluation.responses import (
    CANDIDATES,
    CHECKPOINTS_DIR,
    MODEL_STAGES,
    REFERENCE,
    RESPONSES,
    SAMPLING,
    prompt_formatter,
)
from autorule.rewards import registry as rewards

log = logging.getLogger(__name__)

BASE = "base"  # generate.model=base: model.name_or_path, the untrained base model
MODEL_DIR = "model"
PROMPT_FORMATS = ("plain", "chat_template")  # preprocess.prompt_format
_STEP = re.compile(r"^checkpoint-(\d+)$")


def model_values(cfg: DictConfig) -> list[str]:
    """The models sampled: ``generate.model`` and, when set, ``generate.reference``."""
    section = cfg.generate
    return [str(v) for v in (section.model, section.reference) if v is not None]


def samples_stage(cfg: DictConfig, stage: str) -> bool:
    return stage in model_values(cfg)


def best_of(cfg: DictConfig) -> bool:
    return int(cfg.generate.best_of_n) > 1


def ranking_term(cfg: DictConfig) -> str | None:
    """The reward term that ranks the best-of-N samples; None when nothing ranks them (one
    sample, or N kept unranked with ``generate.best_of_reward=null``)."""
    term = cfg.generate.best_of_reward
    return str(term) if best_of(cfg) and term is not None else None


def reads_prompt_split(cfg: DictConfig) -> bool:
    return prompt_sets.kind(str(cfg.generate.prompts)) == "split"


def ranking_terms(cfg: DictConfig) -> list[str]:
    """The reward term that ranks the samples, as a list (empty when none ranks them)."""
    term = ranking_term(cfg)
    return [] if term is None else [term]


def ignored_keys(cfg: DictConfig) -> tuple[str, ...]:
    keys = rewards.unhashed_keys(cfg, ranking_terms(cfg))
    if BASE not in model_values(cfg):  # the base model is read only as generate.model=base
        keys += ("model.name_or_path", "model.tiny")
    return keys


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What generate reads from outside paths.root: model folders (the policies and the ranking
    term's), hub ids, a prompt file."""
    found: dict[str, Any] = rewards.model_fingerprints(cfg, ranking_terms(cfg))
    for value in model_values(cfg):
        if value in MODEL_STAGES or value == BASE:
            continue
        folder = Path(value).expanduser()
        found[value] = folder_identity(folder.resolve()) if folder.is_dir() else {"hub": value}
    prompts = str(cfg.generate.prompts)
    if prompt_sets.kind(prompts) == "file":
        path = Path(prompts).expanduser()
        found["prompts"] = file_sha256(path) if path.is_file() else None
    elif prompts == prompt_sets.ALPACA_EVAL:
        found["prompts"] = {**prompt_sets.ALPACA_EVAL_HUB, "revision": None}
    return found


# The whole generate section decides the responses except the keys that only change speed or
# where they run; a stage named as a model is an input (only when named), and so is what the
# reward term that ranks best-of-N samples reads (its artifact, its settings, the rule set: the
# term's declaration in the reward registry).
SPEC = StageSpec(
    name="generate",
    inputs=("preprocess", *MODEL_STAGES),
    inputs_when=lambda cfg: rewards.artifact_inputs(cfg, ranking_terms(cfg)),
    keys=(
        "generate",
        "preprocess.prompt_format",
        "preprocess.plain_template",
        "model.name_or_path",
        "model.tiny",
    ),
    keys_when=lambda cfg: rewards.hashed_sections(ranking_terms(cfg)),
    ignore=(
        "generate.backend",
        "generate.batch_size",
        "generate.device",
        "generate.tensor_parallel_size",
        "generate.gpu_memory_utilization",
    ),
    llm_roles=("judge.llm",),
    only_if={
        "preprocess": reads_prompt_split,
        **{stage: (lambda cfg, s=stage: samples_stage(cfg, s)) for stage in MODEL_STAGES},
    },
    uses_rules=lambda cfg: rewards.uses_rules(ranking_terms(cfg)),
    ignore_when=ignored_keys,
    fingerprint=fingerprint,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded."""
    check_paths(cfg)
    section = cfg.generate
    if section.model is None:
        raise ConfigError("generate.model is null: name the model to sample (sft, grpo, ...)")
    check_number(section.temperature, "generate.temperature", integer=False, low=0)
    check_number(section.top_p, "generate.top_p", integer=False, low=0, high=1, low_open=True)
    check_number(section.max_new_tokens, "generate.max_new_tokens", low=1)
    check_number(section.max_prompts, "generate.max_prompts", low=1, none_ok=True)
    check_number(section.max_model_len, "generate.max_model_len", low=2, none_ok=True)
    check_number(section.best_of_n, "generate.best_of_n", low=1)
    check_number(section.batch_size, "generate.batch_size", low=1)
    check_choice(str(section.dtype), "generate.dtype", tuple(DTYPES))
    check_choice(str(section.backend), "generate.backend", BACKENDS)
    check_choice(str(cfg.preprocess.prompt_format), "preprocess.prompt_format", PROMPT_FORMATS)
    for category, value in (OmegaConf.to_container(section.category_temperature) or {}).items():
        check_number(value, f"generate.category_temperature.{category}", integer=False, low=0)
    if best_of(cfg) and float(section.temperature) <= 0:
        raise ConfigError(
            f"generate.best_of_n={section.best_of_n} needs sampling (generate.temperature > 0): "
            "greedy decoding gives the same answer N times"
        )
    for key in ("generate.model", "generate.reference"):
        check_model_folder(OmegaConf.select(cfg, key), key)
    if section.checkpoints and str(section.model) not in MODEL_STAGES:
        raise ConfigError(
            f"generate.checkpoints=true samples the checkpoints a training stage kept; "
            f"generate.model={section.model} is not one of the stages {MODEL_STAGES}"
        )
    if SPEC.reads_rules(cfg):  # best-of-N by the rules term: the rule judge's keys
        from autorule.rewards.judge import check_settings

        check_settings(cfg)


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        section = cfg.generate
        inputs = {name: job.input(name) for name in SPEC.inputs_for(cfg)}

        # ---- load: the prompts and the models
        items, prompt_info = load_prompts(cfg, inputs)
        models = resolve_models(cfg, inputs)
        sampling = Sampling(
            temperature=float(section.temperature),
            top_p=float(section.top_p),
            max_new_tokens=int(section.max_new_tokens),
            seed=int(section.seed),
            dtype=str(section.dtype),
            stop=stop_strings(cfg),
        )
        temperatures = category_temperatures(section, items)
        log.info(
            "[generate] %d prompts (%s) x %d models: %s",
            len(items),
            prompt_info["source"],
            len(models),
            ", ".join(models),
        )

        # ---- sample each model in turn (one in memory at a time)
        counts = {"prompts": len(items), "models": len(models)}
        records: dict[str, dict] = {}
        backend = None
        for label, (path, tokenizer) in models.items():
            n = int(section.best_of_n) if label == "model" else 1
            generator = Generator(
                path,
                Sampling(**{**sampling.__dict__, "n": n}),
                backend=str(section.backend),
                batch_size=int(section.batch_size),
                device=str(section.device),
                tensor_parallel_size=int(section.tensor_parallel_size),
                gpu_memory_utilization=float(section.gpu_memory_utilization),
                max_model_len=section.max_model_len,
                tokenizer=tokenizer,
            )
            backend = generator.backend
            format_prompt = prompt_formatter(cfg, tokenizer or path)
            try:
                samples = generator.conversations(items, format_prompt, temperatures)
            finally:
                generator.close()
            if n > 1:
                chosen = pick_best(cfg, inputs, items, samples, format_prompt, job.workdir)
            else:
                chosen = [[turn[0] for turn in conversation] for conversation in samples]
            rows = [
                response_row(item, answers) for item, answers in zip(items, chosen, strict=True)
            ]
            out = output_file(job.workdir, label)
            write_jsonl(out, rows)
            counts[f"unfinished_{label_key(label)}"] = sum(
                1 for row in rows if not all(row["finished"])
            )
            records[label] = {"path": path, "file": str(out.relative_to(job.workdir))}

        # ---- the settings beside the responses
        info = {
            "sampling": sampling.as_dict(),
            "best_of_n": int(section.best_of_n),
            "best_of_reward": ranking_term(cfg),
            "category_temperature": OmegaConf.to_container(section.category_temperature),
            "backend": backend,
            "prompts": prompt_info,
            "model": str(section.model),
            "reference": None if section.reference is None else str(section.reference),
            "models": records,
        }
        write_json_redacted(job.workdir / SAMPLING, info)
        return job.commit(counts, extra={"generate": {"backend": backend, "models": records}})


# --------------------------------------------------------------------------------------------
# Prompts


def load_prompts(cfg: DictConfig, inputs: dict[str, Path]) -> tuple[list[Conversation], dict]:
    """The prompt set ``generate.prompts`` (its first ``generate.max_prompts``) and its source."""
    value = str(cfg.generate.prompts)
    source = prompt_sets.kind(value)
    if source == "split":
        items = prompt_sets.from_split(inputs["preprocess"], value)
        info = {"source": "split", "split": value, "path": str(inputs["preprocess"])}
    elif source == prompt_sets.ALPACA_EVAL:
        path = prompt_sets.alpaca_eval_file()
        items = prompt_sets.from_file(path)
        info = {"source": prompt_sets.ALPACA_EVAL, **prompt_sets.ALPACA_EVAL_HUB}
    else:
        path = Path(value).expanduser()
        items = prompt_sets.from_file(path)
        info = {"source": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
    limit = cfg.generate.max_prompts
    if limit is not None:
        items = items[: int(limit)]
    if not items:
        raise ValueError(f"generate.prompts={value} gives no prompts")
    info["count"] = len(items)
    info["multi_turn"] = any(len(i.turns) > 1 for i in items)
    return items, info


def stop_strings(cfg: DictConfig) -> tuple[str, ...]:
    """Text that ends an answer: the start of the next user turn in the plain template."""
    if str(cfg.preprocess.prompt_format) != "plain":
        return ()
    head = str(cfg.preprocess.plain_template).split("{prompt}", 1)[0]
    return (head,) if head else ()


def category_temperatures(section: DictConfig, items: list[Conversation]) -> list[float] | None:
    """Per-prompt temperatures from ``generate.category_temperature`` (None: one for all)."""
    table = OmegaConf.to_container(section.category_temperature) or {}
    if not table:
        return None
    default = float(section.temperature)
    return [float(table.get(str(i.meta.get("category")), default)) for i in items]


# --------------------------------------------------------------------------------------------
# Models


def resolve_models(cfg: DictConfig, inputs: dict[str, Path]) -> dict[str, tuple[str, str | None]]:
    """label -> (model path or hub id, tokenizer path or None): ``model``, ``reference`` and, with
    ``generate.checkpoints``, ``step-<N>`` for each checkpoint the model's stage kept."""
    section = cfg.generate
    models = {"model": resolve_model(cfg, str(section.model), inputs, "generate.model")}
    if section.reference is not None:
        models["reference"] = resolve_model(
            cfg, str(section.reference), inputs, "generate.reference"
        )
    if section.checkpoints:
        value = str(section.model)
        for step, folder in kept_checkpoints(inputs[value], value):
            models[f"step-{step}"] = (str(folder), tokenizer_of(folder, inputs[value] / MODEL_DIR))
    return models


def check_model_folder(value: Any, key: str) -> None:
    """Refuses a model path that is a symbolic link to nothing: read as a hub id, it would fail
    later inside transformers without naming the link."""
    if value is None or str(value) in (*MODEL_STAGES, BASE):
        return
    path = Path(str(value)).expanduser()
    if path.is_symlink() and not path.exists():
        raise ConfigError(
            f"{key}={value} is a symbolic link to {os.readlink(path)}, which does not exist"
        )


def resolve_model(
    cfg: DictConfig, value: str, inputs: dict[str, Path], key: str
) -> tuple[str, str | None]:
    if value in MODEL_STAGES:
        folder = inputs[value] / MODEL_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}={value}: the {value} artifact has no {MODEL_DIR}/")
        return str(folder), None
    if value == BASE:
        from autorule.data.models import resolve

        return resolve(cfg, "policy"), None
    path = Path(value).expanduser()
    if path.is_dir():
        return str(path.resolve()), None
    if value.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"{key}={value} is not a folder")
    return value, None  # a hub id


def kept_checkpoints(artifact: Path, stage: str) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each ``checkpoints/checkpoint-<step>/`` of a training artifact."""
    folder = artifact / CHECKPOINTS_DIR
    found = sorted(
        (int(m.group(1)), p)
        for p in (folder.iterdir() if folder.is_dir() else [])
        if p.is_dir() and (m := _STEP.match(p.name))
    )
    if not found:
        raise FileNotFoundError(
            f"generate.checkpoints=true, but the {stage} artifact {artifact} kept no checkpoints "
            f"({CHECKPOINTS_DIR}/checkpoint-<step>/): train it with {stage}.keep_checkpoints=true"
        )
    return found


def tokenizer_of(folder: Path, fallback: Path) -> str | None:
    """A checkpoint's own tokenizer when it saved one, else the final model's."""
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return str(fallback)


# --------------------------------------------------------------------------------------------
# Best of N


def pick_best(
    cfg: DictConfig,
    inputs: dict[str, Path],
    items: list[Conversation],
    samples: list[list[list[Sample]]],
    format_prompt: Callable,
    workdir: Path,
) -> list[list[Sample]]:
    """The highest-scoring of each prompt's N samples under ``generate.best_of_reward``; every
    candidate and its score go to ``candidates.jsonl``. With no ranking term the candidates are
    kept unranked (scores null) and the first is each prompt's answer."""
    term = ranking_term(cfg)
    flat = [
        (format_prompt(item.turns, []), sample.text)
        for item, conversation in zip(items, samples, strict=True)
        for sample in conversation[0]
    ]
    scores: list[float | None] = [None] * len(flat)
    if term is not None:
        scores = [float(s) for s in score_with_term(cfg, inputs, term, flat)]
    chosen, rows, k = [], [], 0
    for item, conversation in zip(items, samples, strict=True):
        n = len(conversation[0])
        mine = scores[k : k + n]
        k += n
        best = 0 if term is None else best_index(mine)
        chosen.append([conversation[0][best]])
        rows.append(
            {
                "id": item.id,
                "candidates": [s.text for s in conversation[0]],
                "scores": mine,
                "chosen": best,
            }
        )
    write_jsonl(workdir / CANDIDATES, rows)
    return chosen


def score_with_term(
    cfg: DictConfig, inputs: dict[str, Path], term: str, flat: list[tuple[str, str]]
) -> list[float]:
    """Reward term ``term``'s scores of (formatted prompt, completion) pairs."""
    rules: list[str] = []
    source = "no rule set"
    if SPEC.reads_rules(cfg):
        from autorule.rules.ruleset import load_rules, rules_source

        rules, source = load_rules(cfg, inputs), rules_source(cfg, inputs)
    context = rewards.RewardContext(
        cfg=cfg, rm_folder=inputs.get("rm"), rules=rules, rules_source=source, inputs=dict(inputs)
    )
    [reward] = rewards.build_reward_funcs([term], context)
    try:
        scores = reward(prompts=[p for p, _ in flat], completions=[c for _, c in flat])
    finally:
        rewards.close_all([reward])
    if len(scores) != len(flat):
        raise ValueError(f"reward term {term!r} gave {len(scores)} scores for {len(flat)}")
    return list(scores)


# --------------------------------------------------------------------------------------------
# Writing


def response_row(item: Conversation, answers: Sequence[Sample]) -> dict[str, Any]:
    return {
        "id": item.id,
        **item.meta,
        "turns": list(item.turns),
        "responses": [a.text for a in answers],
        "output_tokens": [a.output_tokens for a in answers],
        "finished": [a.finished for a in answers],
    }


def output_file(workdir: Path, label: str) -> Path:
    if label == "model":
        return workdir / RESPONSES
    if label == "reference":
        return workdir / REFERENCE
    path = workdir / CHECKPOINTS_DIR / f"{label}.jsonl"
    path.parent.mkdir(exist_ok=True)
    return path


def label_key(label: str) -> str:
    return label.replace("-", "_")
