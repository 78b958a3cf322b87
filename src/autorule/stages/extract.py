"""Stage ``extract``: rules from preference pairs with a reasoning LLM.

    python -m autorule stage=extract dataset=uf
    python -m autorule stage=extract dataset=mt
    python -m autorule stage=extract llm@extract.llm=openai \
        extract.llm.base_url=http://localhost:8000/v1 extract.llm.model=...

Pairs come from preprocess's ``train_prefs`` (``extract.pool=filtered``) or, as the released
code drew them, from the whole split (``unfiltered``), or from MT-Bench's training questions.
Three steps follow, each prompt a template of the set ``extract.prompts`` (``conf/prompts/``:
``detailed``, ours, or ``paper``, the released code's in our words):

1. **reason** — for each sampled pair the reasoner sees both conversations (sides drawn at random,
   see :mod:`autorule.data.pairs`) and which one the user preferred, and explains why;
2. **extract** — the reasoning (``extract.rules_from=reasoning``: the chain of thought, default)
   or the final explanation (``explanation``, as the released code did) is turned into a JSON list
   of short, objective rules, read with :func:`autorule.rules.parsing.parse_rules`; a template
   with a ``{winner}`` placeholder is told which conversation won;
3. **merge** — exact duplicates are dropped (case and spacing folded), then the LLM merges rules
   that say the same thing: the whole list in one call when its prompt fits the merge model's
   context (``extract.merge_context_tokens``, less the answer budget; sizes estimated from the
   characters), as the released code merged it. A longer list, or one longer than
   ``extract.merge_chunk_size`` rules when that is set, is merged part by part and the merged
   parts merged again, until one prompt holds the list; a split for want of context is logged
   and counted (``merge_split_rounds``).

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
``examples.jsonl``), rules_from_substituted (answers without the requested
``extract.rules_from``, e.g. no reasoning, so the explanation was used),
rules_before_merge, rules_after_dedupe, rules_after_merge, merge_calls, merge_rounds,
merge_split_rounds (rounds whose list did not fit one prompt), merge_prompt_tokens_estimate (one
prompt holding the deduplicated list), merge_parse_failures, fallback_rules_used. Call, token and
retry counts cover every call the artifact rests on, cached ones included (with the figures
recorded when they were made).

When extraction yields no rules at all (the tiny profile's random model), ``extract.fallback_rules``
names a rule file to use instead; the stage logs a warning and records the fallback in the counts
and the manifest, which it marks ``provisional``: the next run of the stage recomputes it (replaying
cached answers, asking again for the failed ones), so a later run with a working endpoint does not
find "nothing to do". Without a fallback it fails, saying why. Rules extracted while calls failed
(allowed by ``extract.max_failed_calls``) are provisional the same way.

Everything the stage writes passes :func:`autorule.core.secrets.redact`: answers and error
messages can carry what a server echoed back (an ``Authorization`` header, a token).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from autorule import llm as llms
from autorule.core.artifacts import StageJob
from autorule.core.config import check_choice, check_number, check_paths
from autorule.core.files import write_json_redacted, write_jsonl
from autorule.core.secrets import redact
from autorule.core.stage import StageSpec
from autorule.data.pairs import Pair, mt_pairs, uf_pairs
from autorule.rules.parsing import parse_rules
from autorule.rules.prompts import (
    approx_tokens,
    fill,
    pack_rules,
    render_conversation,
    render_rules,
    rule_tokens,
    user,
)
from autorule.rules.ruleset import dedupe_rules, read_rules_file

log = logging.getLogger(__name__)

# extract.pool -> the preprocess file UltraFeedback pairs are drawn from.
POOLS = {"filtered": "train_prefs.parquet", "unfiltered": "train_prefs_unfiltered.parquet"}
RULES_FROM = ("reasoning", "explanation")  # extract.rules_from
ROLE = "extract.llm"  # the stage's LLM role

# The whole extract section decides the rules, its LLM role included (backend, model, sampling,
# token budget, prompts), except the role's transport keys and the failure allowance.
SPEC = StageSpec(
    name="extract",
    inputs=("preprocess",),
    keys=("extract",),
    llm_roles=(ROLE,),
    ignore=("extract.max_failed_calls",),
    version=3,  # 3: the LLM is the extract.llm role; 2: parser prefers the last non-empty list
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any pair is drawn or any call is paid for."""
    check_paths(cfg)
    section = cfg.extract
    check_choice(cfg.dataset.name, "dataset.name", ("uf", "mt"))
    check_choice(section.rules_from, "extract.rules_from", RULES_FROM)
    check_choice(section.pool, "extract.pool", tuple(POOLS))
    if cfg.dataset.name == "uf":
        check_number(section.num_examples, "extract.num_examples", low=1, meaning=" (pairs drawn)")
    else:
        check_number(section.examples_per_question, "extract.examples_per_question", low=1)
        check_number(
            section.num_questions,
            "extract.num_questions",
            low=1,
            none_ok=True,
            meaning=" (null = all)",
        )
    check_number(section.seed, "extract.seed")
    check_number(
        section.merge_chunk_size,
        "extract.merge_chunk_size",
        low=2,
        none_ok=True,
        meaning=" (rules per merge prompt: merging needs two; null = as the context allows)",
    )
    check_number(
        section.merge_context_tokens,
        "extract.merge_context_tokens",
        low=1,
        meaning=" (the merge model's context window in tokens)",
    )
    check_number(
        section.max_failed_calls,
        "extract.max_failed_calls",
        low=0,
        meaning=" (0 = every call must succeed)",
    )
    llms.check_role(cfg, ROLE)


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        section = cfg.extract
        allowed = int(section.max_failed_calls)
        pairs = sampled_pairs(cfg, job)
        llm = llms.build(cfg, ROLE)
        merge_room(llm, section.prompts.merger, int(section.merge_context_tokens))  # fail early
        calls: list[dict] = []

        reasoned = reason(llm, section, pairs, calls)
        examples = extract_rules(llm, section, pairs, reasoned, calls)
        write_jsonl(job.workdir / "examples.jsonl", examples)
        stop_on_failures(calls, allowed, job.workdir)

        extracted = [r for e in examples for r in e["rules"]]
        unique = dedupe_rules(extracted)  # exact duplicates, then near-duplicates with the LLM
        merged, merge = merge_rules(
            llm,
            unique,
            section.prompts.merger,
            int(section.merge_context_tokens),
            section.merge_chunk_size,
        )
        calls.extend(merge.pop("calls"))
        stop_on_failures(calls, allowed, job.workdir)

        counts = run_counts(section, pairs, calls, examples, extracted, unique, merged, merge)
        final, extra = merged, {"rules_origin": "extracted"}
        if not final:
            # Name the folder examples.jsonl will be in: the artifact if the fallback commits it.
            final, extra = fallback(
                section, counts, job.path if section.fallback_rules else job.workdir
            )
            counts["fallback_rules_used"] = 1
        write_json_redacted(job.workdir / "rules.json", final)
        write_json_redacted(job.workdir / "rules_unmerged.json", unique)
        write_jsonl(job.workdir / "calls.jsonl", calls)
        log.info("[extract] %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        # Fallback rules stand in for extracted ones: the next run of the stage recomputes them.
        provisional = {"provisional": True} if counts["fallback_rules_used"] else {}
        return job.commit(counts, extra={"extract": extra, **provisional})


# --------------------------------------------------------------------------------------------
# Steps


def sampled_pairs(cfg: DictConfig, job: StageJob) -> list[Pair]:
    """The pairs to reason about, from the preprocess artifact; none is an error."""
    pairs = load_pairs(cfg, job.input("preprocess"))
    if not pairs:
        raise ValueError(
            f"extract: no pairs to reason about in {job.input('preprocess')} "
            f"(dataset {cfg.dataset.name}); check the preprocess artifact's counts"
        )
    log.info("[extract] %d pairs from dataset %s", len(pairs), cfg.dataset.name)
    return pairs


def record(calls: list[dict], step: str, completions: list[llms.Completion]) -> None:
    """Adds each call's record (step, index, tokens, latency, error) to ``calls``."""
    calls.extend({"step": step, "index": i, **c.record()} for i, c in enumerate(completions))


def reason(
    llm: llms.LLM, section: DictConfig, pairs: list[Pair], calls: list[dict]
) -> list[llms.Completion]:
    """Step 1: why did the user prefer the winner? One answer per pair."""
    reasoned = llm.complete_all(
        [reason_request(section.prompts.reasoner, p) for p in pairs], desc="extract: reason"
    )
    record(calls, "reason", reasoned)
    return reasoned


def extract_rules(
    llm: llms.LLM,
    section: DictConfig,
    pairs: list[Pair],
    reasoned: list[llms.Completion],
    calls: list[dict],
) -> list[dict]:
    """Step 2: a rule list from each reasoning (or explanation); one example row per pair."""
    examples = [example_row(p, c) for p, c in zip(pairs, reasoned, strict=True)]
    todo = [i for i, c in enumerate(reasoned) if c.ok]
    analyses = {i: pick_text(examples[i], section.rules_from) for i in todo}
    todo = [i for i in todo if analyses[i]]
    substituted = sum(1 for i in todo if examples[i]["rules_from_used"] != section.rules_from)
    if substituted:
        log.warning(
            "[extract] %d of %d answers had no %s; extracting from their explanation "
            "instead (counted as rules_from_substituted)",
            substituted,
            len(todo),
            section.rules_from,
        )
    extracted = llm.complete_all(
        [extract_request(section.prompts.extractor, analyses[i], pairs[i].winner) for i in todo],
        desc="extract: rules",
    )
    record(calls, "extract", extracted)
    for i, completion in zip(todo, extracted, strict=True):
        apply_extraction(examples[i], completion)
    return examples


def run_counts(
    section: DictConfig,
    pairs: list[Pair],
    calls: list[dict],
    examples: list[dict],
    extracted: list[str],
    unique: list[str],
    merged: list[str],
    merge: dict,
) -> dict[str, int]:
    """The manifest's counts: calls and their costs, parse outcomes, rules at each step."""
    return {
        "pairs": len(pairs),
        "calls": len(calls),
        "cached_calls": sum(1 for c in calls if c["cached"]),
        "failed_calls": sum(1 for c in calls if c["error"]),
        "retries": sum(c["retries"] for c in calls),
        "input_tokens": sum(c["input_tokens"] for c in calls),
        "output_tokens": sum(c["output_tokens"] for c in calls),
        "parse_failures": sum(1 for e in examples if e["parse_error"]) + merge["parse_failures"],
        "empty_rule_lists": sum(1 for e in examples if e["parsed"] and not e["rules"]),
        "truncated_rule_lists": sum(1 for e in examples if e["parse_truncated"]),
        "rules_from_substituted": sum(
            1
            for e in examples
            if e["rules_from_used"] and e["rules_from_used"] != section.rules_from
        ),
        "rules_before_merge": len(extracted),
        "rules_after_dedupe": len(unique),
        "rules_after_merge": len(merged),
        "merge_calls": merge["calls_made"],
        "merge_rounds": merge["rounds"],
        "merge_split_rounds": merge["split_rounds"],
        "merge_prompt_tokens_estimate": merge["prompt_tokens_estimate"],
        "merge_parse_failures": merge["parse_failures"],
        "fallback_rules_used": 0,
    }


# --------------------------------------------------------------------------------------------
# Pairs and per-pair bookkeeping


def load_pairs(cfg: DictConfig, folder: Path) -> list[Pair]:
    """The pairs to reason about, drawn from the preprocess artifact of ``cfg.dataset``."""
    section = cfg.extract
    if cfg.dataset.name == "uf":
        path = folder / POOLS[section.pool]
        if not path.is_file():
            raise FileNotFoundError(
                f"extract.pool={section.pool} reads {path}, which the preprocess artifact lacks: "
                "keep train_prefs in preprocess.unfiltered_splits, or use extract.pool=filtered"
            )
        df = pd.read_parquet(path)
        return uf_pairs(
            df, int(section.num_examples), int(section.seed), bool(section.chosen_first)
        )
    if cfg.dataset.name == "mt":
        df = pd.read_parquet(folder / "train.parquet")
        return mt_pairs(
            df,
            int(section.examples_per_question),
            int(section.seed),
            bool(section.chosen_first),
            section.num_questions,
            bool(section.mt_judged_turns_only),
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


def extract_request(template: str, analysis: str, winner: str) -> list[dict[str, str]]:
    """The extractor's request: the analysis, and the winning side where the template names it."""
    return user(
        fill(template, "extract.prompts.extractor", optional={"winner": winner}, analysis=analysis)
    )


def example_row(pair: Pair, completion: llms.Completion) -> dict:
    """The line of ``examples.jsonl`` for one pair, after the reasoning step."""
    return {
        "pair_id": pair.pair_id,
        **pair.row_ids,
        "winner": pair.winner,
        "explanation": completion.text,
        "reasoning": completion.reasoning,
        "rules_from_used": None,
        "rules": [],
        "parsed": False,
        "parse_error": None,
        "parse_method": None,
        "parse_truncated": False,
        "parse_warnings": [],
        "error": completion.error,
    }


def pick_text(example: dict, rules_from: str) -> str:
    """The text rules are extracted from, recorded in ``rules_from_used``.

    A model without a separate reasoning channel (most non-reasoning models, the tiny model) gives
    no chain of thought; its explanation is used instead and the substitution is counted. A pair
    with neither gets the error ``no text to extract from``.
    """
    for name in (rules_from, "explanation"):
        if example[name].strip():
            example["rules_from_used"] = name
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


# --------------------------------------------------------------------------------------------
# Merging


def merge_room(llm: llms.LLM, template: str, context_tokens: int) -> tuple[int, int]:
    """(tokens left for the rule list, tokens of the merge prompt's own text), estimated.

    Raises ValueError when the prompt's text and the answer budget leave no room for rules.
    """
    template_tokens = approx_tokens(fill(template, "extract.prompts.merger", rules=""))
    room = int(context_tokens) - llm.max_tokens - template_tokens
    if room <= 0:
        raise ValueError(
            f"extract.merge_context_tokens={context_tokens} leaves no room for the rules: the "
            f"merge prompt's own text takes about {template_tokens} tokens and the answer "
            f"budget (the LLM's max_tokens) {llm.max_tokens}"
        )
    return room, template_tokens


def merge_rules(
    llm: llms.LLM,
    rules: list[str],
    template: str,
    context_tokens: int,
    chunk_size: int | None = None,
) -> tuple[list[str], dict]:
    """Merges near-duplicate rules with the LLM: the whole list in one call when it fits.

    A merge prompt must fit in ``context_tokens`` with the LLM's ``max_tokens`` to spare (sizes
    estimated by :func:`autorule.rules.prompts.approx_tokens`). A list that does not, or that
    holds more than ``chunk_size`` rules when that is set, is cut into parts that do; each part is
    merged and the merged parts form the next round's list, until a round that fits in one prompt.
    A round split for want of context is logged and counted in ``split_rounds``. A part whose
    answer fails or cannot be parsed keeps its rules unmerged (and is counted); so does one cut off
    by the token budget, whose missing rules would otherwise be dropped from the rule set. A round
    that does not shorten the list stops the loop with a warning, since another round over the
    same parts would not converge either.
    """
    room, template_tokens = merge_room(llm, template, context_tokens)
    info = {
        "calls": [],
        "calls_made": 0,
        "rounds": 0,
        "split_rounds": 0,
        "parse_failures": 0,
        "prompt_tokens_estimate": template_tokens + sum(rule_tokens(rules)),
    }
    while rules:
        info["rounds"] += 1
        parts = pack_rules(rules, room, int(chunk_size) if chunk_size else None)
        if sum(rule_tokens(rules)) > room:
            info["split_rounds"] += 1
            warn_split(info["rounds"], rules, template_tokens, context_tokens, llm, len(parts))
        merged = dedupe_rules(merge_round(llm, template, parts, info))
        if len(parts) == 1:
            return merged, info
        if len(merged) >= len(rules):
            log.warning(
                "[extract] merge round %d did not shorten the list (%d rules); stopping "
                "with the rules unmerged across parts",
                info["rounds"],
                len(merged),
            )
            return merged, info
        rules = merged
    return [], info


def warn_split(
    round_: int, rules: list[str], template_tokens: int, context_tokens: int, llm, parts: int
) -> None:
    log.warning(
        "[extract] merge round %d: %d rules (about %d tokens with the prompt) do not fit "
        "the merge model's context (extract.merge_context_tokens=%d, less max_tokens=%d "
        "for the answer); merging them in %d parts, then the results (counted as "
        "merge_split_rounds)",
        round_,
        len(rules),
        sum(rule_tokens(rules)) + template_tokens,
        context_tokens,
        llm.max_tokens,
        parts,
    )


def merge_round(llm: llms.LLM, template: str, parts: list[list[str]], info: dict) -> list[str]:
    """One merge call per part; the merged rules of all parts (a part whose answer fails, cannot
    be parsed or was cut off keeps its rules unmerged). Records the calls in ``info``."""
    answers = llm.complete_all(
        [
            user(fill(template, "extract.prompts.merger", rules=render_rules(part)))
            for part in parts
        ],
        desc=f"extract: merge round {info['rounds']}",
    )
    record(info["calls"], f"merge{info['rounds']}", answers)
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
    return merged


def fallback(section: DictConfig, counts: dict, folder: Path) -> tuple[list[str], dict]:
    """The fallback rule set when extraction produced none, or an error saying why not."""
    why = (
        f"extraction produced no rules ({counts['pairs']} pairs, {counts['failed_calls']} "
        f"failed calls, {counts['parse_failures']} unparseable answers, "
        f"{counts['empty_rule_lists']} empty lists; see {folder}/examples.jsonl)"
    )
    if not section.fallback_rules:
        raise RuntimeError(
            f"{why}. Set extract.fallback_rules=<rule file> to use a fixed rule "
            "set instead, or rules.path=<file> in later stages."
        )
    rules = read_rules_file(section.fallback_rules)
    log.warning(
        "[extract] %s; USING THE FALLBACK RULE FILE %s (%d rules) instead. These are not "
        "extracted rules.",
        why,
        section.fallback_rules,
        len(rules),
    )
    return rules, {
        "rules_origin": "fallback",
        "fallback_file": str(section.fallback_rules),
        "reason": why,
    }
