"""Stage ``evaluate``: judged win rates, reward-model scores, rule agreement, reward-hacking curves,
and the AlpacaEval / MT-Bench hand-offs, from a generate artifact.

    python -m autorule stage=evaluate                               # the tiny profile's judge: hf
    python -m autorule stage=evaluate llm@evaluate.judge=openai \
        evaluate.judge.base_url=https://api.openai.com/v1 evaluate.judge.model=gpt-4o
    python -m autorule stage=evaluate evaluate.prune_below=0.6      # also write pruned_rules.json

What it measures (docs/evaluation.md):

1. **RM scores** (``evaluate.rm_score``): the rm artifact's reward model scores every response set.
2. **Win rate** (``evaluate.win_rate``): the judge of LLM role ``evaluate.judge`` compares the
   model's and the reference's response to each prompt, in both orders
   (:mod:`autorule.evaluation.pairwise`); disagreeing orders are a tie worth 0.5. It is asked as
   ``evaluate.protocol`` says: ``pairwise`` (a verdict line) or ``leaderboard`` (a ranking of the
   two outputs as a list, the AutoRule paper's prompt, :mod:`autorule.evaluation.leaderboard`).
   The rate comes with a 95% Wilson interval and counts of unparsed answers and failed calls.
   Checkpoints sampled by ``generate.checkpoints`` are judged against the same reference.
3. **Rule agreement** (``evaluate.rule_agreement``): the rule judge (the ``judge`` section, the one
   GRPO's rules reward uses) checks every rule on the chosen and the rejected answer of held-out
   preference pairs (:mod:`autorule.evaluation.agreement`); ``evaluate.prune_below`` writes the
   rules that agree at least that often to ``pruned_rules.json`` (use it with ``rules.path``).
4. **Reward hacking**: the curves of the model's training log (``log_history.jsonl`` of its
   training artifact, e.g. grpo) and of its checkpoints, with flags
   (:mod:`autorule.evaluation.hacking`).
5. **Hand-offs**: ``alpaca_eval/`` (outputs and model config, and AlpacaEval's length-controlled
   win rate when it can run) and, for MT-Bench question sets, ``mt_bench/model_answer/``.

Judge calls that failed (the pairwise judge's or the rule judge's) make the artifact provisional:
the next run recomputes it, replaying the cached answers and asking again only for those calls.

Artifact: ``metrics.json`` (everything the report tabulates), ``judgments.jsonl`` (the judge's
answers, one line per pair), ``rm_scores.json``, ``rule_agreement.json``, ``pruned_rules.json``,
``hacking.json``, ``alpaca_eval/``, ``mt_bench/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from autorule import llm as llms
from autorule.core.artifacts import StageJob, read_manifest
from autorule.core.config import ConfigError, check_choice, check_number, check_paths
from autorule.core.files import write_json_redacted, write_jsonl
from autorule.core.stage import StageSpec
from autorule.evaluation import agreement, alpaca, hacking, leaderboard, mt_bench, pairwise
from autorule.evaluation.responses import (
    MODEL_STAGES,
    SAMPLING,
    prompt_formatter,
    response_sets,
    step_of,
)

log = logging.getLogger(__name__)

LOG_HISTORY = "log_history.jsonl"  # a training artifact's log: one JSON object per logged step
RULE_SATISFACTION = "rule_satisfaction.json"  # a grpo artifact's rule satisfaction, start and end
ALPACA_RUN = ("auto", "false")  # evaluate.alpaca_eval.run (YAML false arrives as False)
ROLE = "evaluate.judge"  # the pairwise judge's LLM role
# evaluate.protocol -> how its answers are read (its template is evaluate.<protocol>.template)
PROTOCOLS: dict[str, pairwise.Parser] = {
    "pairwise": pairwise.parse_preference,
    "leaderboard": leaderboard.parse_ranking,
}


def agreement_on(cfg: DictConfig) -> bool:
    return bool(cfg.evaluate.rule_agreement)


def evaluated_stage(cfg: DictConfig, stage: str) -> bool:
    """Whether ``stage`` trained the evaluated model (its log feeds the reward-hacking curves)."""
    return str(cfg.generate.model) == stage


def ignored_keys(cfg: DictConfig) -> tuple[str, ...]:
    section = cfg.evaluate
    keys: tuple[str, ...] = ()
    if not section.win_rate:
        keys += ("evaluate.judge", "evaluate.protocol", *(f"evaluate.{p}" for p in PROTOCOLS))
    else:  # only the protocol asked with has its template hashed
        keys += tuple(f"evaluate.{p}" for p in PROTOCOLS if p != section.protocol)
    if not agreement_on(cfg):
        keys += ("judge", "evaluate.agreement_split", "evaluate.agreement_pairs")
        keys += ("evaluate.prune_below",)
    if not section.rm_score:
        keys += ("model.pad_token",)
    return keys


# The evaluate section and the rule judge's settings decide the results; the evaluated model's
# training artifact is read for its log; the rm artifact scores, preprocess's held-out pairs test
# the rules.
SPEC = StageSpec(
    name="evaluate",
    inputs=("preprocess", "generate", "rm", *MODEL_STAGES),
    keys=("evaluate", "judge", "model.pad_token"),
    ignore=("evaluate.rm_batch_size",),
    llm_roles=("evaluate.judge", "judge.llm"),
    only_if={
        "preprocess": agreement_on,
        "rm": lambda cfg: bool(cfg.evaluate.rm_score),
        **{stage: (lambda cfg, s=stage: evaluated_stage(cfg, s)) for stage in MODEL_STAGES},
    },
    uses_rules=agreement_on,
    ignore_when=ignored_keys,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded or any call is paid for."""
    from autorule.rules.prompts import fill

    check_paths(cfg)
    section = cfg.evaluate
    check_number(section.max_pairs, "evaluate.max_pairs", low=1, none_ok=True)
    check_number(section.rm_batch_size, "evaluate.rm_batch_size", low=1)
    check_number(section.agreement_pairs, "evaluate.agreement_pairs", low=1, none_ok=True)
    check_number(
        section.prune_below, "evaluate.prune_below", integer=False, low=0, high=1, none_ok=True
    )
    check_number(section.hacking.window, "evaluate.hacking.window", low=1)
    check_number(section.hacking.min_drop, "evaluate.hacking.min_drop", integer=False, low=0)
    check_choice(str(section.alpaca_eval.run).lower(), "evaluate.alpaca_eval.run", ALPACA_RUN)
    if section.win_rate:
        check_choice(section.protocol, "evaluate.protocol", list(PROTOCOLS))
        where = f"evaluate.{section.protocol}.template"
        try:
            fill(str(cfg.evaluate[section.protocol].template), where, **_PAIR_PLACEHOLDERS)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        llms.check_role(cfg, ROLE)
    if agreement_on(cfg):
        from autorule.rewards.judge import check_settings

        check_settings(cfg)
    if section.prune_below is not None and not agreement_on(cfg):
        raise ConfigError(
            "evaluate.prune_below prunes by rule agreement: set evaluate.rule_agreement=true"
        )


_PAIR_PLACEHOLDERS = {"instruction": "", "response_a": "", "response_b": ""}


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        inputs = {name: job.input(name) for name in SPEC.inputs_for(cfg)}
        generated = inputs["generate"]
        info = json.loads((generated / SAMPLING).read_text())
        sets = response_sets(generated, cfg.evaluate.max_pairs)
        metrics, counts = describe_sets(info, sets)
        scores = score_step(cfg, job.workdir, inputs, sets, metrics)
        points = win_rate_step(cfg, job.workdir, inputs, sets, scores, metrics, counts)
        agreement_step(cfg, job.workdir, inputs, metrics, counts)
        hacking_step(cfg, job.workdir, inputs, points, metrics, counts)
        hand_off_step(cfg, job.workdir, generated, sets, info, metrics)
        write_json_redacted(job.workdir / "metrics.json", metrics)
        log.info("[evaluate] win rate: %s", metrics.get("win_rate"))
        return job.commit(counts, extra={"metrics": headline(metrics)})


# --------------------------------------------------------------------------------------------
# The steps of run(), in order; each adds its results to metrics and counts


def describe_sets(info: dict[str, Any], sets: dict[str, list[dict]]) -> tuple[dict, dict]:
    """The metrics and counts that say what was evaluated: models, prompts, sampling, lengths."""
    metrics: dict[str, Any] = {
        "model": info["model"],
        "reference": info["reference"],
        "prompts": info["prompts"],
        "sampling": info["sampling"],
        "best_of_n": info.get("best_of_n", 1),
        "lengths": {label: length_summary(rows) for label, rows in sets.items()},
    }
    return metrics, {"prompts": len(sets["model"])}


def score_step(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], sets: dict, metrics: dict
) -> dict[str, list[float]]:
    """1. The rm artifact's reward model scores every response set (``evaluate.rm_score``)."""
    if not cfg.evaluate.rm_score:
        return {}
    scores = rm_score_sets(cfg, inputs["rm"], sets)
    write_json_redacted(workdir / "rm_scores.json", scores, indent=None)
    metrics["rm_score"] = {label: summary(values) for label, values in scores.items()}
    return scores


def win_rate_step(
    cfg: DictConfig,
    workdir: Path,
    inputs: dict[str, Path],
    sets: dict[str, list[dict]],
    scores: dict[str, list[float]],
    metrics: dict,
    counts: dict,
) -> list[dict[str, Any]]:
    """2. Win rates of each response set against the reference, in both orders, asked as
    ``evaluate.protocol`` says; returns the checkpoints' points for the hacking curves."""
    section = cfg.evaluate
    if not section.win_rate:
        return []
    if "reference" not in sets:
        metrics["win_rate"] = None
        log.warning("[evaluate] no reference responses (generate.reference=null): no win rate")
        return []
    judge = llms.build(cfg, ROLE)
    protocol = str(section.protocol)
    judged_rows, rates = [], {}
    for label in [k for k in sets if k != "reference"]:
        judged = pairwise.judge_pairs(
            judge,
            str(section[protocol].template),
            [row["turns"][0] for row in sets[label]],
            [row["responses"][0] for row in sets[label]],
            [row["responses"][0] for row in sets["reference"]],
            desc=f"evaluate: {label} vs reference",
            parse=PROTOCOLS[protocol],
            where=f"evaluate.{protocol}.template",
        )
        rates[label] = pairwise.win_rate([j.verdict for j in judged]).as_dict()
        judged_rows += judgment_rows(label, sets[label], judged)
    write_jsonl(workdir / "judgments.jsonl", judged_rows)
    metrics["win_rate"] = rates["model"]
    metrics["win_rate_protocol"] = protocol
    metrics["win_rate_checkpoints"] = {k: v for k, v in rates.items() if k != "model"}
    counts["judge_calls"] = 2 * sum(r["pairs"] for r in rates.values())
    counts["unparsed_judge_answers"] = sum(r["unparsed_answers"] for r in rates.values())
    counts["failed_calls"] = counts.get("failed_calls", 0) + sum(
        r["failed_calls"] for r in rates.values()
    )
    return checkpoint_points(cfg, inputs, rates, scores)


def agreement_step(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], metrics: dict, counts: dict
) -> None:
    """3. Rule agreement on held-out preference pairs, and the pruned rule file."""
    if not agreement_on(cfg):
        return
    from autorule.rules.ruleset import load_rules, rules_source

    section = cfg.evaluate
    found = rule_agreement(
        cfg, inputs["preprocess"], load_rules(cfg, inputs), rules_source(cfg, inputs)
    )
    write_json_redacted(workdir / "rule_agreement.json", found)
    metrics["rule_agreement"] = {k: v for k, v in found.items() if k != "rules"}
    counts["agreement_pairs"] = found["overall"]["pairs"]
    counts["failed_calls"] = counts.get("failed_calls", 0) + found["failed"]
    if section.prune_below is not None:
        metrics["pruned_rules"] = write_pruned(workdir, found, section.prune_below)
        counts["pruned_rules_kept"] = len(metrics["pruned_rules"]["kept"])


def hacking_step(
    cfg: DictConfig,
    workdir: Path,
    inputs: dict[str, Path],
    points: list[dict[str, Any]],
    metrics: dict,
    counts: dict,
) -> None:
    """4. Reward hacking: the training log's curves and the checkpoints' points, with flags."""
    found = reward_hacking(cfg, inputs, points)
    write_json_redacted(workdir / "hacking.json", found)
    metrics["hacking_flags"] = found["flags"]
    counts["hacking_flags"] = len(found["flags"])


def hand_off_step(
    cfg: DictConfig,
    workdir: Path,
    generated: Path,
    sets: dict[str, list[dict]],
    info: dict[str, Any],
    metrics: dict,
) -> None:
    """5. The AlpacaEval and MT-Bench hand-offs."""
    model_name, reference_name = names(info)
    metrics["alpaca_eval"] = alpaca_hand_off(cfg, workdir, sets, info, model_name)
    metrics["mt_bench"] = mt_bench_hand_off(workdir, sets, generated, model_name, reference_name)


def names(info: dict[str, Any]) -> tuple[str, str | None]:
    """Names for the outputs handed to AlpacaEval and FastChat: ``autorule-<model>``."""

    def name(value: str | None) -> str | None:
        if value is None:
            return None
        base = Path(value).name if "/" in value else value
        return "autorule-" + re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")

    return name(info["model"]) or "autorule-model", name(info["reference"])


def length_summary(rows: list[dict]) -> dict[str, Any]:
    """Response lengths in tokens (first turn) and characters."""
    tokens = [row["output_tokens"][0] for row in rows]
    return {
        "tokens": tokens,
        "mean_tokens": float(np.mean(tokens)) if tokens else None,
        "mean_chars": float(np.mean([len(row["responses"][0]) for row in rows])) if rows else None,
        "unfinished": sum(1 for row in rows if not row["finished"][0]),
    }


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "std": None}
    return {"n": len(values), "mean": float(np.mean(values)), "std": float(np.std(values))}


def rm_score_sets(cfg: DictConfig, rm_folder: Path, sets: dict[str, list[dict]]) -> dict:
    from autorule.evaluation.scoring import rm_scores

    format_prompt = prompt_formatter(cfg, str(rm_folder / "model"))
    out = {}
    for label, rows in sets.items():
        out[label] = rm_scores(
            rm_folder / "model",
            [format_prompt(row["turns"], []) for row in rows],
            [row["responses"][0] for row in rows],
            batch_size=int(cfg.evaluate.rm_batch_size),
            max_length=int(cfg.rm.max_length),
            pad_token=cfg.model.get("pad_token"),
        )
    return out


def judgment_rows(label: str, rows: list[dict], judged: list[pairwise.PairJudgment]) -> list[dict]:
    return [
        {
            "set": label,
            "id": row["id"],
            "answer_model_as_a": j.answer_x_as_a,
            "answer_model_as_b": j.answer_x_as_b,
            "preferred_model_as_a": j.verdict.x_as_a,
            "preferred_model_as_b": j.verdict.x_as_b,
            "score": j.verdict.score,
        }
        for row, j in zip(rows, judged, strict=True)
    ]


def final_step(cfg: DictConfig, inputs: dict[str, Path]) -> float | None:
    """The training step of the final model (its training artifact's metrics or log)."""
    stage = str(cfg.generate.model)
    if stage not in inputs:
        return None
    folder = inputs[stage]
    try:
        step = json.loads((folder / "metrics.json").read_text()).get("global_step")
        if step is not None:
            return float(step)
    except (OSError, ValueError):
        pass
    if (folder / LOG_HISTORY).is_file():
        rows = hacking.read_log(folder / LOG_HISTORY)
        return float(rows[-1][hacking.STEP]) if rows else None
    return None


def checkpoint_points(
    cfg: DictConfig, inputs: dict[str, Path], rates: dict[str, dict], scores: dict[str, list]
) -> list[dict[str, Any]]:
    """One point per sampled checkpoint (and the final model): step, RM score, win rate."""
    if len(rates) < 2:
        return []
    points = []
    for label, rate in rates.items():
        step = final_step(cfg, inputs) if label == "model" else float(step_of(label))
        if step is None:
            continue
        values = scores.get(label)
        points.append(
            {
                "label": label,
                "step": step,
                "rm_mean": float(np.mean(values)) if values else None,
                "win_rate": rate["rate"],
                "low": rate["low"],
                "high": rate["high"],
            }
        )
    return sorted(points, key=lambda p: p["step"])


# --------------------------------------------------------------------------------------------
# Rule agreement


def build_rule_judge(cfg: DictConfig):
    """The rule judge of the ``judge`` section (the one GRPO's rules reward uses)."""
    try:
        from autorule.rewards.judge import RuleJudge
    except ImportError as err:
        raise RuntimeError(
            "evaluate.rule_agreement=true needs the rule judge (autorule.rewards.judge), which "
            "this installation lacks; set evaluate.rule_agreement=false"
        ) from err
    return RuleJudge(cfg)


def rule_agreement(
    cfg: DictConfig, preprocess: Path, rules: list[str], source: str = "the rule set"
) -> dict[str, Any]:
    """Per-rule and overall agreement with the human preference on held-out pairs."""
    import pandas as pd

    section = cfg.evaluate
    path = preprocess / f"{section.agreement_split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluate.agreement_split={section.agreement_split}: no {path.name} in {preprocess}"
        )
    df = pd.read_parquet(path, columns=["prompt", "chosen_content", "rejected_content"])
    if section.agreement_pairs is not None:
        df = df.head(int(section.agreement_pairs))
    prompts = df["prompt"].tolist()
    judge = build_rule_judge(cfg)
    check_rules = getattr(judge, "check_rules", None)
    if check_rules is not None:  # a rule too long for the judge's budget, named by its file
        check_rules(rules, source)
    try:
        chosen = judge.judge(prompts=prompts, responses=df["chosen_content"].tolist(), rules=rules)
        rejected = judge.judge(
            prompts=prompts, responses=df["rejected_content"].tolist(), rules=rules
        )
    finally:
        close = getattr(judge, "close", None)
        if close is not None:
            close()
    rows = agreement.per_rule(rules, chosen.decisions, rejected.decisions)
    return {
        "split": str(section.agreement_split),
        "overall": agreement.overall(chosen.decisions, rejected.decisions),
        "unparsed": int(chosen.unparsed) + int(rejected.unparsed),
        # calls that failed for good count as not satisfied, as in the rules reward
        "failed": int(getattr(chosen, "failed", 0)) + int(getattr(rejected, "failed", 0)),
        "verdicts": 2 * len(prompts) * len(rules),
        "rules": [r.as_dict() for r in rows],
    }


def write_pruned(workdir: Path, found: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Writes ``pruned_rules.json``, the rules agreeing at least ``threshold`` of the time."""
    rows = [agreement.RuleAgreement(**{k: r[k] for k in AGREEMENT_FIELDS}) for r in found["rules"]]
    kept, dropped = agreement.prune(rows, float(threshold))
    if not kept:
        best = max((r.agreement for r in rows if r.agreement is not None), default=None)
        raise ValueError(
            f"evaluate.prune_below={threshold} keeps no rule (best agreement: {best}); lower it"
        )
    path = workdir / "pruned_rules.json"
    description = (
        f"Rules whose agreement with the human preference on {found['split']} reached "
        f"{threshold} (evaluate.prune_below); {len(dropped)} dropped."
    )
    write_json_redacted(path, {"description": description, "rules": kept})
    log.info(
        "[evaluate] pruned rule file: %d kept, %d dropped -> %s", len(kept), len(dropped), path
    )
    return {"threshold": float(threshold), "kept": kept, "dropped": dropped}


AGREEMENT_FIELDS = ("index", "rule", "pairs", "agree", "disagree", "both", "neither")


# --------------------------------------------------------------------------------------------
# Reward hacking


def reward_hacking(
    cfg: DictConfig, inputs: dict[str, Path], points: list[dict[str, Any]]
) -> dict[str, Any]:
    """Curves of the training log and the checkpoints, and the flags raised on them."""
    section = cfg.evaluate.hacking
    window, min_drop = int(section.window), float(section.min_drop)
    stage = str(cfg.generate.model)
    series: dict[str, Any] = {}
    satisfaction = None
    if stage in inputs and (inputs[stage] / LOG_HISTORY).is_file():
        series = hacking.log_series(hacking.read_log(inputs[stage] / LOG_HISTORY))
    if stage in inputs and (inputs[stage] / RULE_SATISFACTION).is_file():
        satisfaction = json.loads((inputs[stage] / RULE_SATISFACTION).read_text())
    flags = hacking.log_flags(series, window, min_drop) + hacking.checkpoint_flags(points, min_drop)
    for flag in flags:
        log.warning("[evaluate] possible reward hacking: %s", hacking.describe(flag))
    return {
        "training_log": str(inputs[stage] / LOG_HISTORY) if series else None,
        "series": series,
        "rule_satisfaction": satisfaction,
        "checkpoints": points,
        "window": window,
        "min_drop": min_drop,
        "flags": [{**f, "message": hacking.describe(f)} for f in flags],
    }


# --------------------------------------------------------------------------------------------
# Hand-offs


def alpaca_hand_off(
    cfg: DictConfig, workdir: Path, sets: dict, info: dict, model_name: str
) -> dict[str, Any]:
    """Writes AlpacaEval's files; runs it when installed, keyed and on its own instructions."""
    section = cfg.evaluate.alpaca_eval
    mode = str(section.run).lower()
    folder = workdir / "alpaca_eval"
    files = alpaca.write(
        folder,
        sets["model"],
        model_name,
        info["models"]["model"]["path"],
        info["sampling"],
        str(cfg.preprocess.plain_template),
    )
    out: dict[str, Any] = {
        "files": {k: str(Path(v).relative_to(workdir)) for k, v in files.items()}
    }
    reason = None
    if mode == "false":
        reason = "evaluate.alpaca_eval.run=false"
    elif info["prompts"]["source"] != "alpaca_eval":
        reason = "the prompts are not AlpacaEval's (generate.prompts=alpaca_eval)"
    elif not alpaca.installed():
        reason = "alpaca_eval is not installed (pip install 'autorule[alpaca]')"
    elif not os.environ.get(str(section.api_key_env)):
        reason = f"no API key in ${section.api_key_env} (evaluate.alpaca_eval.api_key_env)"
    if reason:
        out["status"] = f"not run: {reason}"
        return out
    row = alpaca.run(Path(files["outputs"]), str(section.annotators_config), folder / "results")
    out.update(status="ran", leaderboard=row)
    out["length_controlled_winrate"] = row.get("length_controlled_winrate")
    return out


def mt_bench_hand_off(
    workdir: Path, sets: dict, generated: Path, model_name: str, reference_name: str | None
) -> dict[str, Any]:
    """FastChat answer files, when the prompts were MT-Bench questions (rows with question_id)."""
    if not all("question_id" in row for row in sets["model"]):
        return {"status": "not written: the prompts are not an MT-Bench question file"}
    created = (read_manifest(generated) or {}).get("created_at")
    tstamp = dt.datetime.fromisoformat(created).timestamp() if created else 0.0
    folder = workdir / "mt_bench"
    written = {model_name: mt_bench.write_answers(folder, sets["model"], model_name, tstamp)}
    if reference_name and "reference" in sets and reference_name != model_name:
        written[reference_name] = mt_bench.write_answers(
            folder, sets["reference"], reference_name, tstamp
        )
    return {
        "status": "written",
        "answers": {k: str(v.relative_to(workdir)) for k, v in written.items()},
    }


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest's summary: the numbers a reader looks for first."""
    rate = metrics.get("win_rate") or {}
    agreement_info = (metrics.get("rule_agreement") or {}).get("overall") or {}
    return {
        "win_rate": rate.get("rate"),
        "win_rate_95": [rate.get("low"), rate.get("high")],
        "unparsed_judge_answers": rate.get("unparsed_answers"),
        "rule_agreement": agreement_info.get("overall_agreement"),
        "hacking_flags": len(metrics.get("hacking_flags", [])),
        "alpaca_eval": metrics.get("alpaca_eval", {}).get("status"),
    }
