"""What grpo (and every stage with a served LLM role) finds out before any model loads: a judge
that cannot be reached, named with its role and URL, and a failing run that ends in one
``[autorule] error:`` paragraph with the traceback in the log file only."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autorule.core.config import compose
from autorule.llm.base import UnreachableError
from autorule.pipeline import probe_stages, run_stage
from fakeserver import FakeLLMServer, closed_port

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autorule", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def served_judge(root, url: str, *more: str) -> list[str]:
    return [
        "stage=grpo",
        f"paths.root={root}",
        "grpo.rewards=[rm,rules]",
        "llm@judge.llm=openai",
        f"judge.llm.base_url={url}",
        *more,
    ]


def test_a_dead_judge_is_named_with_its_url_before_anything_runs(tmp_path):
    root, url = tmp_path / "root", f"http://127.0.0.1:{closed_port()}/v1"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-abcdefghijklmnopqrstuvwxyz"}
    res = cli(*served_judge(root, url), env=env)
    assert res.returncode == 1, res.stderr[-3000:]
    assert res.stderr.count("[autorule] error:") == 1
    assert f"judge.llm: the server at {url} cannot be reached" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (root / "grpo").exists() and not (root / "preprocess").exists()


def test_a_judge_that_answers_500_is_refused_and_a_live_one_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz")
    with FakeLLMServer() as server:
        cfg = compose(served_judge(tmp_path, server.url + "/v1"))
        probe_stages(cfg, ["grpo"])
        assert server.probes == 1 and not server.requests  # no chat completion paid for
        server.models_status = 500
        with pytest.raises(
            UnreachableError, match=r"judge.llm: the server at .* answered HTTP 500"
        ):
            run_stage(cfg)
    assert not (tmp_path / "grpo").exists()
    # A local judge has nothing to reach; a term without a judge probes nothing.
    probe_stages(compose([f"paths.root={tmp_path}", "stage=grpo"]), ["grpo"])
    quiet = compose(
        served_judge(tmp_path, f"http://127.0.0.1:{closed_port()}/v1", "grpo.rewards=[rm]")
    )
    probe_stages(quiet, ["grpo"])


BROKEN_STAGE = """
    from autorule.core.stage import StageSpec

    SPEC = StageSpec(name="broken", keys=("seed",))


    def run(cfg):
        raise KeyError("a column the code expected")
"""


def test_a_failure_ends_in_one_error_paragraph_with_the_traceback_in_the_log(tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "broken_stage_plugin.py").write_text(textwrap.dedent(BROKEN_STAGE))
    path = [str(plugin), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    root = tmp_path / "root"
    res = cli(
        "stage=pipeline",
        f"paths.root={root}",
        "+stage_modules.broken=broken_stage_plugin",
        "pipeline.stages=[broken]",
        env=env,
    )
    assert res.returncode == 1
    assert res.stderr.count("[autorule] error:") == 1
    assert "[autorule] error: KeyError: 'a column the code expected'" in res.stderr
    assert "Traceback" not in res.stderr
    [log_file] = Path(
        res.stderr.split("The traceback is in ")[1].split()[0].rstrip(".")
    ).parent.glob("*.log")
    assert log_file.is_relative_to(root) and "Traceback" in log_file.read_text()
    assert "a column the code expected" in log_file.read_text()
