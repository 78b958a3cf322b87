"""Stage ``report``: one Markdown report of a run, with tables and PNG plots, from its evaluate
artifact.

    python -m autorule stage=report          # after stage=evaluate; prints the report's path
    python -m autorule.stages.report [overrides]   # only prints where the report of a config is

Sections: the run (models, prompts, sampling), the win rate over the reference with its 95%
interval and the judge's unparsed answers, reward-model scores, response lengths, rule agreement,
reward-hacking curves and flags, and the AlpacaEval / MT-Bench hand-offs. Plots
(:mod:`autorule.evaluation.plots`): reward curves per term, per-rule satisfaction over training,
win rates with intervals, response length distributions, rule agreement, RM score against win
rate over checkpoints. A plot whose data the run does not have is left out, and the report says
why.

Artifact: ``report.md`` and ``plots/*.png``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from autorule.core.artifacts import StageInputError, StageJob, artifact_path
from autorule.core.config import check_number, check_paths
from autorule.core.files import write_text_redacted
from autorule.core.stage import StageSpec
from autorule.evaluation import plots
from autorule.evaluation.markdown import markdown_code, markdown_text

log = logging.getLogger(__name__)

REPORT = "report.md"
PLOTS = "plots"

SPEC = StageSpec(name="report", inputs=("evaluate",), keys=("report",))


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before anything is drawn."""
    check_paths(cfg)
    check_number(cfg.report.dpi, "report.dpi", low=10, high=1200)


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if not job.done:
            evaluated = job.input("evaluate")
            text = render(cfg, evaluated, job.workdir)
            write_text_redacted(job.workdir / REPORT, text)
            figures = sorted((job.workdir / PLOTS).glob("*.png"))
            job.commit({"plots": len(figures)})
        print(f"[autorule] report: {job.path / REPORT}", flush=True)
        return job.path


def report_file(cfg: DictConfig) -> Path:
    """Where the report of this config is (or will be)."""
    return artifact_path(cfg, SPEC.name) / REPORT


def load(folder: Path, name: str) -> Any:
    """The JSON file ``name`` of the evaluate artifact, or None when it was not written; a file
    that cannot be read stops the report, naming it and the command that rewrites it."""
    path = folder / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StageInputError(f"{path} cannot be read ({err}); {RECOMPUTE}") from None


RECOMPUTE = "recompute the evaluate artifact with:\n  python -m autorule stage=evaluate force=true"


def render(cfg: DictConfig, evaluated: Path, workdir: Path) -> str:
    """The report's Markdown; draws the plots under ``workdir/plots``. Every text an LLM or a
    file supplied passes :func:`~autorule.evaluation.markdown.markdown_text` on its way in."""
    metrics = load(evaluated, "metrics.json")
    if not isinstance(metrics, dict):
        raise StageInputError(f"{evaluated / 'metrics.json'} holds no JSON object; {RECOMPUTE}")
    hack = load(evaluated, "hacking.json") or {}
    agreement_info = load(evaluated, "rule_agreement.json")
    draw = Figures(workdir / PLOTS, int(cfg.report.dpi), int(cfg.evaluate.hacking.window))

    lines = [f"# {cfg.report.title}", ""]
    lines += run_section(metrics, evaluated)
    lines += win_rate_section(metrics, draw)
    lines += rm_score_section(metrics.get("rm_score"))
    lines += length_section(metrics.get("lengths") or {}, draw)
    lines += rule_agreement_section(agreement_info, metrics.get("pruned_rules"), draw)
    lines += hacking_section(hack, agreement_info, draw)
    lines += hand_off_section(metrics)
    return "\n".join(lines).rstrip() + "\n"


@dataclass
class Figures:
    """Where the report's plots go, and how they are drawn."""

    folder: Path
    dpi: int
    window: int  # logged steps averaged in the training curves

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.png"

    @staticmethod
    def embed(name: str, path: Path | None, missing: str) -> list[str]:
        """The Markdown of a drawn plot, or the line saying why there is none."""
        if path is None:
            return [f"_No {name} plot: {missing}._", ""]
        return [f"![{name}]({PLOTS}/{path.name})", ""]


def run_section(metrics: dict, evaluated: Path) -> list[str]:
    sampling = metrics.get("sampling") or {}
    prompts = metrics.get("prompts") or {}
    source = prompts.get("split") or prompts.get("path") or prompts.get("source")
    return [
        "| | |",
        "| --- | --- |",
        f"| model | {markdown_code(metrics.get('model'))} |",
        f"| reference | {markdown_code(metrics.get('reference'))} |",
        f"| prompts | {markdown_text(source)} ({prompts.get('count')} prompts) |",
        f"| sampling | temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, "
        f"up to {sampling.get('max_new_tokens')} new tokens, {sampling.get('dtype')}, "
        f"best of {metrics.get('best_of_n', 1)} |",
        f"| evaluate artifact | {markdown_code(evaluated)} |",
        "",
    ]


def win_rate_section(metrics: dict, draw: Figures) -> list[str]:
    lines = ["## Win rate over the reference", ""]
    rate = metrics.get("win_rate")
    if rate is None:
        return lines + ["No reference responses were sampled (generate.reference=null).", ""]
    rates = [("model", rate), *(metrics.get("win_rate_checkpoints") or {}).items()]
    lines += win_rate_table(rates)
    lines += [
        "Each pair is judged twice with the responses swapped; a pair whose two verdicts "
        "disagree is a tie worth 0.5. The interval is the 95% Wilson interval over the "
        "scored pairs; pairs with an unreadable answer or a failed call are left out and "
        "counted.",
        "",
    ]
    drawn = plots.win_rates(rates, draw.path("win_rates"), draw.dpi)
    return lines + draw.embed("win rate", drawn, "no pair was judged")


def rm_score_section(rm: dict | None) -> list[str]:
    if not rm:
        return []
    lines = [
        "## Reward-model scores",
        "",
        "| responses | n | mean | std |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {markdown_text(label)} | {v['n']} | {_num(v['mean'])} | {_num(v['std'])} |"
        for label, v in rm.items()
    ]
    return lines + [""]


def length_section(lengths: dict, draw: Figures) -> list[str]:
    lines = [
        "## Response lengths",
        "",
        "| responses | mean tokens | mean characters | cut by the budget |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {markdown_text(label)} | {_num(v['mean_tokens'])} | {_num(v['mean_chars'])} | "
        f"{v['unfinished']} |"
        for label, v in lengths.items()
    ]
    lines += [""]
    tokens = {k: v["tokens"] for k, v in lengths.items() if not k.startswith("step-")}
    drawn = plots.lengths(tokens, draw.path("lengths"), draw.dpi)
    return lines + draw.embed("length", drawn, "no responses")


def rule_agreement_section(found: dict | None, pruned: dict | None, draw: Figures) -> list[str]:
    lines = ["## Rule agreement with human preferences", ""]
    if found is None:
        return lines + ["Not measured (evaluate.rule_agreement=false).", ""]
    lines += agreement_table(found, pruned)
    drawn = plots.rule_agreement(found["rules"], draw.path("rule_agreement"), draw.dpi)
    return lines + draw.embed("rule agreement", drawn, "no rules")


def hacking_section(hack: dict, agreement_info: dict | None, draw: Figures) -> list[str]:
    series = hack.get("series") or {}
    flags = hack.get("flags") or []
    lines = ["## Reward hacking", ""]
    if flags:
        lines += ["**Flagged** (a reward kept rising while the quality it stands for fell):", ""]
        lines += [f"- {markdown_text(f['message'])}" for f in flags] + [""]
    else:
        lines += [
            "No reward rose while the rule satisfaction or the win rate fell by "
            f"{hack.get('min_drop', '?')} or more from its peak (training curves averaged over "
            f"{draw.window} logged step{'s' if draw.window != 1 else ''}).",
            "",
        ]
    no_log = "the evaluated model has no training log (log_history.jsonl)"
    drawn = plots.reward_curves(series, draw.path("rewards"), draw.dpi, draw.window)
    lines += ["### Reward curves per term", ""] + draw.embed("reward", drawn, no_log)
    rules = rule_names(hack, agreement_info)
    drawn = plots.rule_satisfaction(
        series, rules, draw.path("rule_satisfaction"), draw.dpi, draw.window
    )
    lines += ["### Rule satisfaction over training", ""]
    lines += draw.embed(
        "rule satisfaction", drawn, "the training log has no per-rule satisfaction (rules/<i>)"
    )
    lines += satisfaction_table(hack.get("rule_satisfaction"))
    checkpoints = hack.get("checkpoints") or []
    drawn = plots.rm_vs_win_rate(checkpoints, draw.path("rm_vs_win_rate"), draw.dpi)
    lines += ["### RM score and win rate over checkpoints", ""]
    return lines + draw.embed(
        "checkpoints",
        drawn,
        "fewer than two judged checkpoints (generate.checkpoints=true samples them)",
    )


def win_rate_table(rates: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| responses | win rate | 95% CI | wins | ties | losses | scored | unparsed answers "
        "| failed calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in rates:
        interval = f"[{_num(r['low'])}, {_num(r['high'])}]" if r["rate"] is not None else "n/a"
        lines.append(
            f"| {markdown_text(label)} | {_num(r['rate'])} | {interval} | {r['wins']} | "
            f"{r['ties']} | "
            f"{r['losses']} | {r['scored']} of {r['pairs']} | {r['unparsed_answers']} | "
            f"{r['failed_calls']} |"
        )
    return lines + [""]


def agreement_table(found: dict, pruned: dict | None) -> list[str]:
    overall = found["overall"]
    lines = [
        f"On {overall['pairs']} held-out pairs ({markdown_text(found['split'])}), the rule set "
        "prefers the "
        f"chosen answer in {overall['agree']}, the rejected one in {overall['disagree']}, neither "
        f"in {overall['ties']}: overall agreement **{_num(overall['overall_agreement'])}** (ties "
        f"count half). Unreadable verdicts: {found['unparsed']} of {found['verdicts']}; failed "
        f"calls: {found.get('failed', 0)} (both count as not satisfied).",
        "",
        "| # | rule | agreement | tells apart | chosen only | rejected only | both | neither |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in found["rules"]:
        lines.append(
            f"| {r['index']} | {markdown_text(r['rule'])} | {_num(r['agreement'])} | "
            f"{_num(r['coverage'])} | "
            f"{r['agree']} | {r['disagree']} | {r['both']} | {r['neither']} |"
        )
    lines.append("")
    if pruned:
        lines += [
            f"Pruned rule file (agreement >= {pruned['threshold']}): {len(pruned['kept'])} kept, "
            f"{len(pruned['dropped'])} dropped; train with "
            "`rules.path=<evaluate artifact>/pruned_rules.json`.",
            "",
        ]
    return lines


def satisfaction_table(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    lines = ["| # | rule | start | end |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {r.get('index')} | {markdown_text(r.get('rule'))} | {_num(r.get('start'))} | "
        f"{_num(r.get('end'))} |"
        for r in rows
    ]
    return lines + [""]


def rule_names(hack: dict, agreement_info: dict | None) -> list[str]:
    rows = hack.get("rule_satisfaction") or (agreement_info or {}).get("rules") or []
    ordered = sorted(rows, key=lambda r: r.get("index", 0))
    return [str(r.get("rule", "")) for r in ordered]


def hand_off_section(metrics: dict) -> list[str]:
    alpaca_info = metrics.get("alpaca_eval") or {}
    mt = metrics.get("mt_bench") or {}
    lines = ["## AlpacaEval 2.0 and MT-Bench", ""]
    lc = alpaca_info.get("length_controlled_winrate")
    files = ", ".join(markdown_code(v) for v in (alpaca_info.get("files") or {}).values())
    lines.append(
        f"- AlpacaEval: {markdown_text(alpaca_info.get('status'))}"
        + (f"; length-controlled win rate **{_num(lc)}**" if lc is not None else "")
        + f". Files: {files}"
    )
    answers = ", ".join(markdown_code(v) for v in (mt.get("answers") or {}).values())
    lines.append(
        f"- MT-Bench: {markdown_text(mt.get('status'))}" + (f": {answers}" if answers else "")
    )
    lines += ["", "Commands for both: docs/evaluation.md.", ""]
    return lines


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


if __name__ == "__main__":
    # `make demo` ends with this: the report of the config given by these overrides.
    from autorule.core.config import compose

    print(f"Report: {report_file(compose(sys.argv[1:]))}")
