"""Stage ``feedback_eval``: the best-of-N picks of each feedback reward model, judged against a
reference under both feedback protocols (the 2x2 of Bansal et al., ICLR 2024).

    python -m autorule stage=feedback_eval experiment=feedback_study

For each training protocol (``ratings``, ``rankings``) the stage reads the generate artifact made
with that protocol's reward model (``generate.best_of_reward=feedback_rm``, the config with
``feedback_rm.protocol`` set to it): inputs under configs of their own, which the pipeline makes
first when they are missing (feedback_rm, then generate, under that protocol), so one command
runs the whole study. For each N of ``feedback_eval.n_values`` the
pick is the best-scoring of the first N candidates of ``candidates.jsonl`` (the candidates are
independent samples, so the first N are a best-of-N draw of their own).

Each pick is compared with a reference answer to the same prompt: with
``feedback_eval.reference=alpaca_eval_davinci003``, text-davinci-003's answer from AlpacaEval
(``feedback_eval.alpaca_eval``: the hub dataset or a local copy), matched by instruction (the
study's evaluation: sample ``generate.prompts=alpaca_eval_unseen``, the instructions of
``dataset=sparse_feedback`` unseen in training); else the file ``feedback_eval.reference``
names (instruction + output rows, matched by instruction), else the
generate artifact's ``reference.jsonl`` when it has one (``generate.reference`` set), else the
prompt's first candidate, an unselected sample of the same policy (best-of-1 against it then
scores about 0.5).
The annotator (LLM role ``feedback.llm``, the feedback stage's templates) judges under

* **ratings**: pick and reference are rated alone; the higher rating wins, equal ratings tie;
* **rankings**: the pair is asked in both orders; the same position winning both is a tie.

Win rate = (wins + 0.5 ties) / n with a 95% interval of 1.96 x SEM
(:func:`autorule.evaluation.feedback_protocols.sem_win_rate`); unread or failed judgments are
left out and counted, and failed ones make the artifact provisional (the next run asks again for
them only).

Artifact: ``win_rates.json`` (training protocol -> evaluation protocol -> N -> win rate),
``win_rate_vs_n.png`` and ``report.md`` (the feedback artifact's consistency table, each reward
model's held-out accuracies, and the 2x2 at the largest N).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_number, check_paths, with_values
from autorule.core.files import read_jsonl, write_json_redacted, write_text_redacted
from autorule.core.stage import StageSpec
from autorule.evaluation import feedback_protocols as fb
from autorule.evaluation.annotators import (
    annotator_line,
    build_annotator,
    check_annotator,
    unused_settings,
)
from autorule.evaluation.responses import CANDIDATES, REFERENCE, RESPONSES, pick_for_n

log = logging.getLogger(__name__)

PROTOCOLS = ("ratings", "rankings")
# feedback_eval.reference naming AlpacaEval's reference answers (text-davinci-003's).
ALPACA_DAVINCI = "alpaca_eval_davinci003"


def alpaca_location(cfg: DictConfig) -> tuple[str, str | None]:
    """Where AlpacaEval is read (a hub id or a local folder holding alpaca_eval.json), and the
    hub revision."""
    section = cfg.feedback_eval.alpaca_eval
    return str(section.path or section.hub_id), section.get("revision")


def reference_answers(cfg: DictConfig) -> tuple[str, dict[str, str]] | None:
    """(where, answers by instruction) of ``feedback_eval.reference``; None when it is null."""
    reference = cfg.feedback_eval.reference
    if reference is None:
        return None
    if str(reference) == ALPACA_DAVINCI:
        from autorule.data.sources import read_source

        where, revision = alpaca_location(cfg)
        rows = read_source("alpaca_eval", where, revision)
        return ALPACA_DAVINCI, dict(zip(rows["prompt"], rows["reference"], strict=True))
    from autorule.evaluation.prompt_sets import reference_answers as from_file

    return str(reference), from_file(str(reference), "feedback_eval.reference")


WIN_RATES, REPORT, PLOT = "win_rates.json", "report.md", "win_rate_vs_n.png"


def with_protocol(cfg: DictConfig, protocol: str) -> DictConfig:
    """``cfg`` with ``feedback_rm.protocol=protocol`` (and that override in ``run.overrides``, so
    the commands recorded for artifacts made under it are right)."""
    return with_values(cfg, {"feedback_rm.protocol": protocol})


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What the references are, by content: AlpacaEval's (its files or hub id and revision) or
    the reference file's (not its path)."""
    reference = cfg.feedback_eval.reference
    if reference is None:
        return {}
    if str(reference) == ALPACA_DAVINCI:
        from autorule.data.fingerprints import dataset_source

        return {"reference": dataset_source(*alpaca_location(cfg))}
    from autorule.core.hashing import file_sha256

    path = Path(str(reference)).expanduser()
    return {"reference": file_sha256(path) if path.is_file() else None}


def picks_configured(cfg: DictConfig) -> bool:
    """Whether generate's settings rank best-of-N samples with a feedback reward model (the
    picks this stage judges; :func:`check_picks` says what is wrong otherwise)."""
    return int(cfg.generate.best_of_n) > 1 and cfg.generate.best_of_reward == "feedback_rm"


# Each protocol's reward model and best-of-N picks: the feedback_rm and generate stages under
# that protocol's config (made by the pipeline when missing).
PER_PROTOCOL = {
    f"{stage}_{protocol}": (stage, protocol)
    for stage in ("feedback_rm", "generate")
    for protocol in PROTOCOLS
}

SPEC = StageSpec(
    name="feedback_eval",
    inputs=("feedback", *PER_PROTOCOL),
    input_stages={name: stage for name, (stage, _) in PER_PROTOCOL.items()},
    input_configs={
        name: (lambda cfg, p=protocol: with_protocol(cfg, p))
        for name, (_, protocol) in PER_PROTOCOL.items()
    },
    only_if=dict.fromkeys(PER_PROTOCOL, picks_configured),
    keys=(
        "feedback_eval",
        "feedback.annotator",
        "feedback.heuristic",
        "feedback.llm",
        "feedback.rating_template",
        "feedback.ranking_template",
        "feedback.rating_line",
    ),
    llm_roles=("feedback.llm",),
    # Where AlpacaEval is read: the fingerprint (content or hub id and revision) stands in.
    ignore=("feedback_eval.max_failed_calls", "feedback_eval.alpaca_eval"),
    ignore_when=unused_settings,
    fingerprint=fingerprint,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any call is paid for."""
    check_paths(cfg)
    section = cfg.feedback_eval
    values = list(section.n_values)
    if not values:
        raise ConfigError("feedback_eval.n_values is empty: give the N of best-of-N to judge")
    for n in values:
        check_number(n, "feedback_eval.n_values[]", low=1)
    check_number(section.max_failed_calls, "feedback_eval.max_failed_calls", low=0)
    reference = section.reference
    if (
        reference is not None
        and str(reference) != ALPACA_DAVINCI
        and not Path(str(reference)).expanduser().is_file()
    ):
        raise ConfigError(
            f"feedback_eval.reference={reference} is not a file: name a JSON, JSONL or "
            f"parquet file of instructions and reference answers, {ALPACA_DAVINCI}, or null"
        )
    check_annotator(cfg)


def check_picks(cfg: DictConfig) -> None:
    """The generate settings the picks need (checked when the stage runs: other stages run
    with best_of_n=1; without them, the picks are no input and the pipeline makes nothing)."""
    section = cfg.feedback_eval
    if max(section.n_values) > int(cfg.generate.best_of_n):
        raise ConfigError(
            f"feedback_eval.n_values goes up to {max(section.n_values)} but generate.best_of_n="
            f"{cfg.generate.best_of_n} candidates are sampled per prompt"
        )
    if int(cfg.generate.best_of_n) < 2 or cfg.generate.best_of_reward != "feedback_rm":
        raise ConfigError(
            "feedback_eval judges feedback reward models' best-of-N picks: set "
            "generate.best_of_n > 1 and generate.best_of_reward=feedback_rm "
            "(experiment=feedback_study does)"
        )


def picks_and_references(
    folder: Path, n_values: Sequence[int], reference_file: tuple[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """Prompts, references and the pick of each N from one generate artifact; the references
    come from ``reference_file`` (its path, and its answers by instruction) when it is given."""
    if not (folder / CANDIDATES).is_file():
        raise FileNotFoundError(
            f"{folder / CANDIDATES} is missing: feedback_eval needs generate.best_of_n > 1"
        )
    rows = read_jsonl(folder / CANDIDATES)
    prompts = {r["id"]: str(r["turns"][0]) for r in read_jsonl(folder / RESPONSES)}
    instructions = [prompts[r["id"]] for r in rows]
    if reference_file is not None:
        file, by_instruction = reference_file
        missing = [q for q in instructions if q not in by_instruction]
        if missing:
            raise ValueError(
                f"feedback_eval.reference={file} has no answer for {len(missing)} of "
                f"the {len(instructions)} prompts of {folder}, e.g. {missing[0][:80]!r}: sample "
                "the same prompts (generate.prompts) the reference file answers"
            )
        references = [by_instruction[q] for q in instructions]
        source = (
            f"{file} ({len(instructions)} instructions matched)"
            if file == ALPACA_DAVINCI
            else Path(file).name
        )
    elif (folder / REFERENCE).is_file():
        reference = {r["id"]: str(r["responses"][0]) for r in read_jsonl(folder / REFERENCE)}
        references = [reference[r["id"]] for r in rows]
        source = "reference.jsonl"
    else:
        references = [str(r["candidates"][0]) for r in rows]
        source = "first candidate"
    return {
        "instructions": instructions,
        "references": references,
        "reference_source": source,
        "picks": {
            n: [str(r["candidates"][pick_for_n(r["scores"], n)]) for r in rows] for n in n_values
        },
    }


def table(scores: dict[str, dict[str, dict[int, list[float | None]]]]) -> dict[str, Any]:
    """Training protocol -> evaluation protocol -> str(N) -> the win rate of the per-prompt
    scores (1 win, 0.5 tie, 0 loss, None unread)."""
    return {
        trained: {
            judged: {str(n): fb.sem_win_rate(s).as_dict() for n, s in by_n.items()}
            for judged, by_n in by_judged.items()
        }
        for trained, by_judged in scores.items()
    }


def run(cfg: DictConfig) -> Path:
    from autorule.core.artifacts import StageJob

    check(cfg)
    check_picks(cfg)
    section = cfg.feedback_eval
    n_values = sorted({int(n) for n in section.n_values})
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        consistency_md = (job.input("feedback") / "consistency.md").read_text()
        reference_file = reference_answers(cfg)  # read once, for both protocols' picks
        data, accuracies, pair_counts = {}, {}, {}
        for protocol in PROTOCOLS:
            folder = job.input(f"generate_{protocol}")
            rm = job.input(f"feedback_rm_{protocol}")
            data[protocol] = picks_and_references(folder, n_values, reference_file)
            metrics = json.loads((rm / "metrics.json").read_text())
            accuracies[protocol] = {
                k: metrics.get(f"heldout_{k}_accuracy") for k in ("rankings", "ratings")
            }
            pair_counts[protocol] = {
                k: metrics.get(f"heldout_{k}_pairs") for k in ("rankings", "ratings")
            }
        annotator = build_annotator(cfg)
        scores, failed, unread = judge_all(annotator, data, n_values)
        if failed > int(section.max_failed_calls):
            raise RuntimeError(
                f"{failed} annotator calls failed (feedback_eval.max_failed_calls="
                f"{section.max_failed_calls}); finished calls are cached: re-run the same "
                "command to retry only the failed ones"
            )
        result = {
            "n_values": n_values,
            "reference": {p: d["reference_source"] for p, d in data.items()},
            "prompts": {p: len(d["instructions"]) for p, d in data.items()},
            "win_rates": table(scores),
            "heldout_accuracy": accuracies,
            "heldout_pairs": pair_counts,
            "annotator": annotator.describe(),
        }
        write_json_redacted(job.workdir / WIN_RATES, result)
        plot(result, job.workdir / PLOT)
        write_text_redacted(job.workdir / REPORT, report(result, consistency_md))
        return job.commit(
            {"prompts": sum(result["prompts"].values()), "failed_calls": failed, "unread": unread}
        )


def judge_all(annotator, data, n_values):
    """Scores of each pick against its reference under both evaluation protocols."""
    # every distinct (instruction, response) rated once; the cache would dedupe repeats anyway
    texts = sorted(
        {
            (q, r)
            for d in data.values()
            for q, r in zip(d["instructions"], d["references"], strict=True)
        }
        | {
            (q, r)
            for d in data.values()
            for picks in d["picks"].values()
            for q, r in zip(d["instructions"], picks, strict=True)
        }
    )
    answers = annotator.rate(
        [q for q, _ in texts], [r for _, r in texts], desc="feedback_eval: ratings"
    )
    failed = sum(a.failed for a in answers)
    unread = sum(a.unparsed for a in answers)
    rating = {t: a.rating for t, a in zip(texts, answers, strict=True)}

    scores: dict[str, dict[str, dict[int, list[float | None]]]] = {}
    for protocol, d in data.items():
        qs, refs = d["instructions"], d["references"]
        by_rating, by_ranking = {}, {}
        for n in n_values:
            picks = d["picks"][n]
            by_rating[n] = [
                fb.rating_score(rating[(q, p)], rating[(q, r)])
                for q, p, r in zip(qs, picks, refs, strict=True)
            ]
            judged = annotator.rank(
                qs, picks, refs, desc=f"feedback_eval: rankings ({protocol}, N={n})"
            )
            failed += sum(j.verdict.failed for j in judged)
            unread += sum(j.verdict.unparsed for j in judged)
            by_ranking[n] = [j.verdict.score for j in judged]
        scores[protocol] = {"ratings": by_rating, "rankings": by_ranking}
    return scores, failed, unread


def fmt(cell: dict[str, Any]) -> str:
    if cell["rate"] is None:
        return "n/a"
    return f"{cell['rate']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}] (n={cell['n']})"


def report(result: dict[str, Any], consistency_md: str) -> str:
    n = str(max(result["n_values"]))
    rates = result["win_rates"]
    lines = [
        "# Ratings vs rankings",
        "",
        annotator_line(result["annotator"]),
        "",
        "## Consistency of the annotator's two protocols",
        "",
        consistency_md.strip(),
        "",
        "## Held-out accuracy of each reward model",
        "",
        "| trained on | on rankings | on ratings |",
        "|---|---|---|",
    ]
    for p, acc in result["heldout_accuracy"].items():
        pairs = result["heldout_pairs"][p]
        cells = [
            "n/a" if acc[k] is None else f"{acc[k]:.3f} ({pairs[k]} pairs)"
            for k in ("rankings", "ratings")
        ]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Win rate of the best-of-{n} picks against the reference",
        "",
        "(wins + 0.5 ties) / n, 95% interval of 1.96 x SEM; references: "
        + ", ".join(f"{p}: {s}" for p, s in result["reference"].items())
        + ".",
        "",
        "| trained on \\ judged by | ratings | rankings |",
        "|---|---|---|",
    ]
    for p in PROTOCOLS:
        lines.append(f"| {p} | {fmt(rates[p]['ratings'][n])} | {fmt(rates[p]['rankings'][n])} |")
    lines += ["", f"Every N of {result['n_values']}:", "", f"![win rate against N]({PLOT})"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Win rate against N, a line per reward model and evaluation protocol, with intervals."""
    from autorule.evaluation.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for trained, by_judged in result["win_rates"].items():
        for judged, by_n in by_judged.items():
            ns = [n for n in result["n_values"] if by_n[str(n)]["rate"] is not None]
            rates = [by_n[str(n)]["rate"] for n in ns]
            errors = [by_n[str(n)]["high"] - by_n[str(n)]["rate"] for n in ns]
            ax.errorbar(
                ns,
                rates,
                yerr=errors,
                marker="o",
                capsize=3,
                linestyle="-" if judged == "rankings" else "--",
                label=f"RM: {trained}, judged by {judged}",
            )
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result["n_values"], [str(n) for n in result["n_values"]])
    ax.set_xlabel("N (best of N)")
    ax.set_ylabel("win rate against the reference")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)
