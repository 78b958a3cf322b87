"""Stages describe themselves: found by name, hashed by their own config and LLM role only, and a
package whose imports point one way."""

import ast
import json
import sys
import textwrap
from pathlib import Path

import pytest

import autorule
from autorule.core.artifacts import artifact_path
from autorule.core.config import compose, renamed_overrides
from autorule.core.stage import get_spec, load
from autorule.pipeline import run_stage

PACKAGE = Path(autorule.__file__).parent

TOY_MODULE = '''
"""A stage that lives outside autorule: doubles a number, after preprocess."""
import json
from autorule.core.artifacts import StageJob
from autorule.core.stage import StageSpec

SPEC = StageSpec(name="toy", inputs=("preprocess",), keys=("toy",), llm_roles=("toy.llm",))


def run(cfg):
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        rows = (job.input("preprocess") / "manifest.json").exists()
        (job.workdir / "out.json").write_text(json.dumps({"double": 2 * cfg.toy.value, "ok": rows}))
        return job.commit({"value": int(cfg.toy.value)})
'''


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """The toy stage's module, importable as ``toy_stage_plugin`` (no autorule module edited)."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "toy_stage_plugin.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    yield "toy_stage_plugin"
    sys.modules.pop("toy_stage_plugin", None)


def toy_overrides(root, *more):
    # Only config: the stage's module and settings, and the pipeline list.
    return [
        f"paths.root={root}",
        "+stage_modules.toy=toy_stage_plugin",
        "+toy.value=21",
        "+llm@toy.llm=openai",
        "pipeline.stages=[preprocess,toy]",
        *more,
    ]


def test_a_toy_stage_is_found_hashed_dry_run_and_run(tmp_path, toy_module, capsys):
    cfg = compose(["stage=pipeline", *toy_overrides(tmp_path, "dry_run=true")])
    assert load("toy", cfg).SPEC.name == "toy"
    folder = artifact_path(cfg, "toy")
    assert folder.parent.name == "toy"
    run_stage(cfg)
    out = capsys.readouterr().out
    assert "dry run: stage toy not run" in out and str(folder) in out
    assert not folder.exists()

    cfg = compose(["stage=pipeline", *toy_overrides(tmp_path)])
    done = run_stage(cfg)
    assert done["toy"] == folder
    assert json.loads((folder / "out.json").read_text()) == {"double": 42, "ok": True}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "toy" and manifest["counts"] == {"value": 21}
    assert set(manifest["inputs"]) == {"preprocess"}
    # Its own settings move its folder; its role's transport does not.
    assert artifact_path(compose(toy_overrides(tmp_path, "toy.value=3")), "toy") != folder
    moved = toy_overrides(tmp_path, "toy.llm.base_url=http://elsewhere:9/v1")
    assert artifact_path(compose(moved), "toy") == folder


def test_an_unknown_stage_names_where_stages_live(make_cfg):
    with pytest.raises(KeyError, match="no module autorule.stages.nope.*Adding a stage"):
        load("nope", make_cfg())


def folders(cfg) -> dict[str, Path]:
    return {name: artifact_path(cfg, name) for name in ("preprocess", "extract", "sft", "rm")}


def test_an_llm_role_moves_only_its_own_stage(tmp_path, toy_module):
    base = toy_overrides(tmp_path, "llm@extract.llm=openai")
    before = folders(compose(base))
    toy_before = artifact_path(compose(base), "toy")

    # Another role's model (the toy stage's judge-like role) leaves every other stage in place.
    other_role = compose([*base, "toy.llm.model=some-judge"])
    assert folders(other_role) == before
    assert artifact_path(other_role, "toy") != toy_before

    # The extract role's transport keys change nothing.
    for transport in (
        "extract.llm.base_url=http://gpu-node-7:8001/v1",
        "extract.llm.max_concurrency=3",
        "extract.llm.timeout=5",
        "extract.llm.retry.max_attempts=1",
        "extract.llm.cache_dir=/elsewhere",
    ):
        assert folders(compose([*base, transport])) == before, transport

    # Its own model and prompts move extract (and nothing that does not read it).
    for own in ("extract.llm.model=other", "extract.prompts.merger='Merge: {rules}'"):
        moved = folders(compose([*base, own]))
        assert moved["extract"] != before["extract"], own
        assert {k: v for k, v in moved.items() if k != "extract"} == {
            k: v for k, v in before.items() if k != "extract"
        }
        assert artifact_path(compose([*base, own]), "toy") == toy_before


def test_llm_settings_that_change_answers_are_one_list():
    """The response cache and the artifact hash agree on what is transport."""
    from autorule.llm.openai_compat import OpenAICompatLLM

    backend = OpenAICompatLLM(
        model="m",
        temperature=0.2,
        max_tokens=9,
        base_url="http://127.0.0.1:1/v1",
        max_concurrency=3,
        timeout=4,
        progress=False,
    )
    assert backend.params() == {"temperature": 0.2, "max_tokens": 9}
    assert get_spec("extract").ignored(compose([]))  # the same list feeds the hash


def test_old_spellings_name_the_new_ones():
    found = renamed_overrides(
        ["llm=openai", "llm.base_url=x", "extract.source=explanation", "a=1", "llm@judge.llm=hf"]
        + ["prompts@judge.prompts=paper", "prompts/judge@judge.prompts=paper"]
    )
    assert len(found) == 4
    assert "llm@extract.llm=<backend>" in found[0] and "extract.llm.<key>" in found[1]
    assert "extract.rules_from" in found[2]
    assert "prompts/judge@judge.prompts=detailed|paper" in found[3]


# --------------------------------------------------------------------------------------------
# Imports point down the layers


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """autorule modules that ``path`` imports, at module level or inside functions."""
    found = set()
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py")]
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# The low-level helpers and what each may import (the file writers mask secrets).
LOW_LEVEL = {
    "autorule.core.hashing": set(),
    "autorule.core.files": {"autorule.core.secrets"},
    "autorule.core.secrets": set(),
}
LAYERS = ["core", "data", "llm", "rules", "training", "rewards", "evaluation", "stages"]


def test_low_level_helpers_import_nothing_from_the_package():
    graph = import_graph()
    for name, allowed in LOW_LEVEL.items():
        assert graph[name] <= allowed, (name, graph[name] - allowed)


def stage_to_stage_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("autorule.stages.")
        for target in targets
        if target.startswith("autorule.stages.") or target == "autorule.stages"
    ]


def test_no_stage_imports_another_stage():
    """Stages talk through artifacts: what two share lives a layer down, and the pipeline makes
    an input a stage lacks (docs/architecture.md)."""
    assert stage_to_stage_imports(import_graph()) == []
    # the check sees both spellings of an import
    assert stage_to_stage_imports({"autorule.stages.a": {"autorule.stages.b"}}) != []
    assert stage_to_stage_imports({"autorule.stages.a": {"autorule.stages"}}) != []


def test_imports_point_down_the_layers():
    graph = import_graph()
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, targets in graph.items():
        layer = module.split(".")[1] if module.count(".") >= 1 else None
        for target in targets:
            target_layer = target.split(".")[1] if target.count(".") >= 1 else None
            if layer in rank and target_layer in rank and rank[target_layer] > rank[layer]:
                upward.append(f"{module} -> {target}")
    assert not upward, upward
