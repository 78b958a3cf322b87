"""Stage ``extract``: rules from preference pairs with a reasoning LLM.

    python -m autorule stage=extract dataset=uf
    python -m autorule stage=extract dataset=mt
    python -m autorule stage=extract llm=openai llm.base_url=http://localhost:8000/v1 llm.model=...

Three steps, each prompt a template under ``extract.prompts``:

1. **reason** — for each sampled pair the reasoner sees both conversations (sides drawn at random,
   see :mod:`autorule.data.pairs`) and which one the user preferred, and explains why;
2. **extract** — the reasoning (``extract.source=reasoning``: the chain of thought, default) or the
   final explanation (``explanation``, as the released code did) is turned into a JSON list of
   short, objective rules, read with :func:`autorule.rules.parsing.parse_rules`;
3. **merge** — exact duplicates are dropped (case and spacing folded), then the LLM merges rules
   that say the same thing. A list longer than ``extract.merge_chunk_size`` is merged chunk by
   chunk, and the merged chunks are merged again, until one prompt holds the whole list.

Every call goes through the response cache (:mod:`autorule.llm`): an interrupted run, re-run with
the same command, replays the finished calls and pays only for the rest. Calls that fail for good
stop the stage before merging (beyond ``extract.max_failed_calls``), so a transient outage never
bakes a partial rule set into a complete artifact.

Artifact: ``rules.json`` (the final list of strings), ``rules_unmerged.json`` (the extracted rules
after exact de-duplication), ``examples.jsonl`` (one line per pair: ids, winning side, explanation,
reasoning, rules or the parse error), ``calls.jsonl`` (one record per LLM call: step, latency,
tokens, retries, cached, error). Counts in the manifest: pairs, calls, cached_calls, failed_calls,
retries, input_tokens, output_tokens, parse_failures, empty_rule_lists, truncated_rule_lists
(answers cut off mid-list: their complete rules are kept, see ``parse_warnings`` in
``examples.jsonl``), source_substituted (answers without the requested ``extract.source``, e.g. no
reasoning, so the explanation was used),
rules_before_merge, rules_after_dedupe, rules_after_merge, merge_calls, merge_rounds,
merge_parse_failures, fallback_rules_used. Call, token and retry counts cover every call the
artifact rests on, cached ones included (with the figures recorded when they were made).

When extraction yields no rules at all (the tiny profile's random model), ``extract.fallback_rules``
names a rule file to use instead; the stage logs a warning and records the fallback in the counts
and the manifest, which it marks ``provisional``: the next run of the stage recomputes it (replaying
cached answers, asking again for the failed ones), so a later run with a working endpoint does not
find "nothing to do". Without a fallback it fails, saying why.

Everything the stage writes passes :func:`autorule.core.secrets.redact`: answers and error
messages can carry what a server echoed back (an ``Authorization`` header, a token).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from autorule import llm as llms
from autorule.core.artifacts import StageJob
from autorule.core.config import ConfigError, check_choice, check_number, check_paths
from autorule.core.secrets import redact
from autorule.data.pairs import Pair, mt_pairs, uf_pairs
from autorule.llm.base import check_settings
from autorule.rules.parsing import parse_rules
from autorule.rules.prompts import fill, render_conversation, render_rules, user
from autorule.rules.ruleset import chunks, dedupe_rules, read_rules_file

log = logging.getLogger(__name__)

SOURCES = ("reasoning", "explanation")


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any pair is drawn or any call is paid for."""
    check_paths(cfg)
    x = cfg.extract
    check_choice(cfg.dataset.name, "dataset.name", ("uf", "mt"))
    check_choice(x.source, "extract.source", SOURCES)
    if cfg.dataset.name == "uf":
        check_number(x.num_examples, "extract.num_examples", low=1, meaning=" (pairs drawn)")
    else:
        check_number(x.examples_per_question, "extract.examples_per_question", low=1)
        check_number(
            x.num_questions, "extract.num_questions", low=1, none_ok=True, meaning=" (null = all)"
        )
    check_number(x.seed, "extract.seed")
    check_number(
        x.merge_chunk_size,
        "extract.merge_chunk_size",
        low=2,
        meaning=" (rules per merge prompt: merging needs two)",
    )
    check_number(
        x.max_failed_calls,
        "extract.max_failed_calls",
        low=0,
        meaning=" (0 = every call must succeed)",
    )
    where, section = llm_section(cfg)
    check_settings(OmegaConf.to_container(section, resolve=True), where)


def llm_section(cfg: DictConfig) -> tuple[str, DictConfig]:
    """The extract stage's LLM settings and their dotted name (``extract.llm``, else ``llm``)."""
    for where in ("extract.llm", "llm"):
        section = OmegaConf.select(cfg, where)
        if section is not None:
            return where, section
    raise ConfigError("extract needs an LLM: pick a backend with llm=bedrock|openai|hf|vllm")


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, "extract") as job:
        if job.done:
            return job.path
        x = cfg.extract

        # ---- load: the sampled pairs
        pairs = load_pairs(cfg, job.input("preprocess"))
        if not pairs:
            raise ValueError(
                f"extract: no pairs to reason about in {job.input('preprocess')} "
                f"(dataset {cfg.dataset.name}); check the preprocess artifact's counts"
            )
        log.info("[extract] %d pairs from dataset %s", len(pairs), cfg.dataset.name)
        llm = llms.build(cfg)
        calls: list[dict] = []

        def record(step: str, completions: list[llms.Completion]) -> None:
            calls.extend(
                {"step": step, "index": i, **c.record()} for i, c in enumerate(completions)
            )

        # ---- 1. reason: why did the user prefer the winner?
        reasoned = llm.complete_all(
            [reason_request(x.prompts.reasoner, p) for p in pairs], desc="extract: reason"
        )
        record("reason", reasoned)

        # ---- 2. extract: rules from the reasoning (or the explanation)
        examples = [example_row(p, c) for p, c in zip(pairs, reasoned, strict=True)]
        todo = [i for i, c in enumerate(reasoned) if c.ok]
        analyses = {i: pick_source(examples[i], x.source) for i in todo}
        todo = [i for i in todo if analyses[i]]
        substituted = sum(1 for i in todo if examples[i]["source_used"] != x.source)
        if substituted:
            log.warning(
                "[extract] %d of %d answers had no %s; extracting from their explanation "
                "instead (counted as source_substituted)",
                substituted,
                len(todo),
                x.source,
            )
        extracted = llm.complete_all(
            [
                user(fill(x.prompts.extractor, "extract.prompts.extractor", analysis=analyses[i]))
                for i in todo
            ],
            desc="extract: rules",
        )
        record("extract", extracted)
        for i, completion in zip(todo, extracted, strict=True):
            apply_extraction(examples[i], completion)

        write_jsonl(job.workdir / "examples.jsonl", examples)
        stop_on_failures(calls, int(x.max_failed_calls), job.workdir)

        # ---- 3. merge: exact duplicates, then near-duplicates with the LLM
        extracted_rules = [r for e in examples for r in e["rules"]]
        unique = dedupe_rules(extracted_rules)
        merged, merge = merge_rules(llm, unique, x.prompts.merger, int(x.merge_chunk_size))
        calls.extend(merge.pop("calls"))
        stop_on_failures(calls, int(x.max_failed_calls), job.workdir)

        # ---- write the artifact
        counts = {
            "pairs": len(pairs),
            "calls": len(calls),
            "cached_calls": sum(1 for c in calls if c["cached"]),
            "failed_calls": sum(1 for c in calls if c["error"]),
            "retries": sum(c["retries"] for c in calls),
            "input_tokens": sum(c["input_tokens"] for c in calls),
            "output_tokens": sum(c["output_tokens"] for c in calls),
            "parse_failures": sum(1 for e in examples if e["parse_error"])
            + merge["parse_failures"],
            "empty_rule_lists": sum(1 for e in examples if e["parsed"] and not e["rules"]),
            "truncated_rule_lists": sum(1 for e in examples if e["parse_truncated"]),
            "source_substituted": sum(
                1 for e in examples if e["source_used"] and e["source_used"] != x.source
            ),
            "rules_before_merge": len(extracted_rules),
            "rules_after_dedupe": len(unique),
            "rules_after_merge": len(merged),
            "merge_calls": merge["calls_made"],
            "merge_rounds": merge["rounds"],
            "merge_parse_failures": merge["parse_failures"],
            "fallback_rules_used": 0,
        }
        extra = {"rules_source": "extracted"}
        final = merged
        if not final:
            # Name the folder examples.jsonl will be in: the artifact if the fallback commits it.
            final, extra = fallback(x, counts, job.path if x.fallback_rules else job.workdir)
            counts["fallback_rules_used"] = 1
        write_json(job.workdir / "rules.json", final)
        write_json(job.workdir / "rules_unmerged.json", unique)
        write_jsonl(job.workdir / "calls.jsonl", calls)
        log.info("[extract] %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        # Fallback rules stand in for extracted ones: the next run of the stage recomputes them.
        provisional = {"provisional": True} if counts["fallback_rules_used"] else {}
        return job.commit(counts, extra={"extract": extra, **provisional})


# --------------------------------------------------------------------------------------------
# Pairs and per-pair bookkeeping


def load_pairs(cfg: DictConfig, folder: Path) -> list[Pair]:
    """The pairs to reason about, drawn from the preprocess artifact of ``cfg.dataset``."""
    x = cfg.extract
    if cfg.dataset.name == "uf":
        df = pd.read_parquet(folder / "train_prefs.parquet")
        return uf_pairs(df, int(x.num_examples), int(x.seed), bool(x.chosen_first))
    if cfg.dataset.name == "mt":
        df = pd.read_parquet(folder / "train.parquet")
        return mt_pairs(
            df, int(x.examples_per_question), int(x.seed), bool(x.chosen_first), x.num_questions
        )
    raise ValueError(f"extract knows datasets uf and mt, got dataset.name={cfg.dataset.name!r}")


def reason_request(template: str, pair: Pair) -> list[dict[str, str]]:
    return user(
        fill(
            template,
            "extract.prompts.reasoner",
            conversation_a=render_conversation(pair.conversation_a),
            conversation_b=render_conversation(pair.conversation_b),
            winner=pair.winner,
        )
    )


def example_row(pair: Pair, completion: llms.Completion) -> dict:
    """The line of ``examples.jsonl`` for one pair, after the reasoning step."""
    return {
        "pair_id": pair.pair_id,
        **pair.source,
        "winner": pair.winner,
        "explanation": completion.text,
        "reasoning": completion.reasoning,
        "source_used": None,
        "rules": [],
        "parsed": False,
        "parse_error": None,
        "parse_method": None,
        "parse_truncated": False,
        "parse_warnings": [],
        "error": completion.error,
    }


def pick_source(example: dict, source: str) -> str:
    """The text rules are extracted from, recorded in ``source_used``.

    A model without a separate reasoning channel (most non-reasoning models, the tiny model) gives
    no chain of thought; its explanation is used instead and the substitution is counted. A pair
    with neither gets the error ``no text to extract from``.
    """
    for name in (source, "explanation"):
        if example[name].strip():
            example["source_used"] = name
            return example[name]
    example["error"] = "no text to extract from"
    return ""


def apply_extraction(example: dict, completion: llms.Completion) -> None:
    if not completion.ok:
        example["error"] = completion.error
        return
    parsed = parse_rules(completion.text)
    example.update(
        rules=parsed.rules,
        parsed=parsed.ok,
        parse_error=parsed.error,
        parse_method=parsed.method or None,
        parse_truncated=parsed.truncated,
        parse_warnings=parsed.warnings,
    )


def stop_on_failures(calls: list[dict], allowed: int, workdir: Path) -> None:
    """Raises when more calls failed for good than ``extract.max_failed_calls`` allows.

    Committing would bake the gaps of a transient outage into a complete artifact; raising leaves
    the finished calls in the cache, so the re-run pays only for the failed ones.
    """
    failed = [c for c in calls if c["error"]]
    if failed and len(failed) > allowed:
        write_jsonl(workdir / "calls.jsonl", calls)
        raise RuntimeError(
            f"{len(failed)} of {len(calls)} LLM calls failed (extract.max_failed_calls={allowed}); "
            f"first error: {redact(failed[0]['error'])}\nFinished calls are cached: re-run the "
            f"same command to retry only the failed ones. Details: {workdir}/examples.jsonl, "
            f"{workdir}/calls.jsonl"
        )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON line per row, secrets masked (:func:`autorule.core.secrets.redact`)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in redact(rows):
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON, secrets masked."""
    path.write_text(json.dumps(redact(obj), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Merging


def merge_rules(
    llm: llms.LLM, rules: list[str], template: str, chunk_size: int
) -> tuple[list[str], dict]:
    """Merges near-duplicate rules with the LLM, chunk by chunk when the list is long.

    Each round merges every chunk of ``chunk_size`` rules; the merged chunks form the next round's
    list, until a round that fits in one prompt. A chunk whose answer fails or cannot be parsed
    keeps its rules unmerged (and is counted); so does one cut off by the token budget, whose
    missing rules would otherwise be dropped from the rule set. A round that does not shorten the
    list stops the loop with a warning, since another round over the same chunks would not
    converge either.
    """
    info = {"calls": [], "calls_made": 0, "rounds": 0, "parse_failures": 0}
    while rules:
        info["rounds"] += 1
        parts = chunks(rules, chunk_size)
        answers = llm.complete_all(
            [
                user(fill(template, "extract.prompts.merger", rules=render_rules(part)))
                for part in parts
            ],
            desc=f"extract: merge round {info['rounds']}",
        )
        info["calls"] += [
            {"step": f"merge{info['rounds']}", "index": i, **c.record()}
            for i, c in enumerate(answers)
        ]
        info["calls_made"] += len(answers)
        merged: list[str] = []
        for part, answer in zip(parts, answers, strict=True):
            parsed = parse_rules(answer.text) if answer.ok else None
            if parsed is None or not parsed.ok or not parsed.rules or parsed.truncated:
                info["parse_failures"] += int(parsed is not None)
                why = answer.error or (parsed.error if parsed else "") or "empty list"
                if parsed is not None and parsed.truncated:
                    why = "the merged list was cut off (token budget: llm.max_tokens)"
                log.warning(
                    "[extract] merge of %d rules failed (%s); keeping them unmerged", len(part), why
                )
                merged += part
            else:
                merged += parsed.rules
        merged = dedupe_rules(merged)
        if len(parts) == 1:
            return merged, info
        if len(merged) >= len(rules):
            log.warning(
                "[extract] merge round %d did not shorten the list (%d rules); stopping "
                "with the rules unmerged across chunks",
                info["rounds"],
                len(merged),
            )
            return merged, info
        rules = merged
    return [], info


def fallback(x: DictConfig, counts: dict, folder: Path) -> tuple[list[str], dict]:
    """The fallback rule set when extraction produced none, or an error saying why not."""
    why = (
        f"extraction produced no rules ({counts['pairs']} pairs, {counts['failed_calls']} "
        f"failed calls, {counts['parse_failures']} unparseable answers, "
        f"{counts['empty_rule_lists']} empty lists; see {folder}/examples.jsonl)"
    )
    if not x.fallback_rules:
        raise RuntimeError(
            f"{why}. Set extract.fallback_rules=<rule file> to use a fixed rule "
            "set instead, or rules.path=<file> in later stages."
        )
    rules = read_rules_file(x.fallback_rules)
    log.warning(
        "[extract] %s; USING THE FALLBACK RULE FILE %s (%d rules) instead. These are not "
        "extracted rules.",
        why,
        x.fallback_rules,
        len(rules),
    )
    return rules, {
        "rules_source": "fallback",
        "fallback_file": str(x.fallback_rules),
        "reason": why,
    }
