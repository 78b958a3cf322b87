"""Every LLM backend of conf/llm/ comes with the files "Adding an LLM backend" in
docs/architecture.md lists; a backend that lacks one fails here, naming it."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BACKENDS = sorted(p.stem for p in (REPO / "conf" / "llm").glob("*.yaml"))


def backend_problems(name: str, repo: Path = REPO) -> list[str]:
    """What backend ``name`` lacks of the files a backend touches."""
    conf = repo / "conf" / "llm" / f"{name}.yaml"
    text = conf.read_text()
    problems = []
    header = [line for line in text.splitlines() if line.startswith("#")]
    if not any("python -m autorule" in line and f"={name}" in line for line in header):
        problems.append(f"{conf.name}: no header command mounting it (llm@<role>={name})")
    if any(f" llm={name}" in line for line in header):
        problems.append(f"{conf.name}: the header spells the retired llm={name}")
    settings = yaml.safe_load(text)
    if "/llm_common@_here_" not in settings.get("defaults", []):
        problems.append(f"{conf.name}: does not start from /llm_common@_here_")
    module, _, cls = str(settings.get("_target_", "")).rpartition(".")
    source = repo / "src" / Path(*module.split(".")).with_suffix(".py")
    if not module.startswith("autorule.llm.") or not source.is_file():
        problems.append(f"{conf.name}: _target_ is not a class of a module in src/autorule/llm/")
    else:
        classes = {
            n.name for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.ClassDef)
        }
        if cls not in classes:
            problems.append(f"{source.name} defines no class {cls}")
    if f"    {name} " not in (repo / "src" / "autorule" / "llm" / "__init__.py").read_text():
        problems.append("src/autorule/llm/__init__.py does not list it")
    table = [line for line in (repo / "docs" / "architecture.md").read_text().splitlines()]
    if not any(line.startswith("| `llm` |") and f"`{name}`" in line for line in table):
        problems.append("docs/architecture.md: the llm row of the config groups lacks it")
    tests = (repo / "tests" / "unit").rglob("test_*.py")
    if cls and not any(cls in path.read_text() for path in tests):
        problems.append(f"no unit test under tests/unit/ names {cls}")
    return problems


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_has_its_files(name):
    assert backend_problems(name) == []


def test_a_backend_lacking_a_file_is_named(tmp_path):
    for part in ("conf/llm", "src/autorule/llm", "docs", "tests/unit"):
        (tmp_path / part).mkdir(parents=True)
    (tmp_path / "conf/llm/echo.yaml").write_text(
        "# an echo\n#   python -m autorule stage=extract llm=echo\n"
        "defaults:\n  - /llm_common@_here_\n_target_: autorule.llm.echo.EchoLLM\n"
    )
    (tmp_path / "src/autorule/llm/__init__.py").write_text("")
    (tmp_path / "docs/architecture.md").write_text("| `llm` | `openai` |\n")
    problems = backend_problems("echo", tmp_path)
    assert len(problems) == 5, problems
    assert any("retired llm=echo" in p for p in problems)
    assert any("_target_" in p for p in problems)
