"""grpo.engine=openrlhf end to end, with a stand-in for `ray` that does what the job leaves
behind (a policy in --save_path): the artifact commits it as model/, records the reward server's
artifact as an input, and keeps the submitted command."""

import json
import os
import shlex
import sys

import pytest

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import grpo, reward_server

pytestmark = pytest.mark.slow

# A `ray` that logs its arguments and saves the starting policy as the trained one.
FAKE_RAY = """#!{python}
import json, shutil, sys
args = sys.argv[1:]
with open({log!r}, "w") as f:
    json.dump(args, f)
value = lambda flag: args[args.index(flag) + 1]
if {save}:
    shutil.copytree(value("--pretrain"), value("--save_path"))
"""


def fake_ray(folder, log, save=True):
    folder.mkdir(exist_ok=True)
    script = folder / "ray"
    script.write_text(FAKE_RAY.format(python=sys.executable, log=str(log), save=save))
    script.chmod(0o755)
    return folder


def test_the_jobs_policy_becomes_the_grpo_artifacts_model(trained, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    root = trained["sft"].parents[1]
    overrides = [
        f"paths.root={root}",
        "grpo.engine=openrlhf",
        "grpo.rewards=[length_penalty]",
        "reward_server.advertise_host=head-node",
    ]
    server_artifact, _ = reward_server.prepare(compose(["stage=reward_server", *overrides]))
    record = json.loads((server_artifact / reward_server.SERVER_FILE).read_text())
    assert record["terms"] == ["length_penalty"] and record["url"].startswith("http://head-node:")
    assert set(read_manifest(server_artifact)["inputs"]) == {"sft"}

    log = tmp_path / "ray-args.json"
    bin_dir = fake_ray(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = compose(["stage=grpo", *overrides])
    path = grpo.run(cfg)

    args = json.loads(log.read_text())
    assert args[:2] == ["job", "submit"] and "openrlhf.cli.train_ppo_ray" in args
    assert args[args.index("--remote_rm_url") + 1] == record["url"]
    manifest = read_manifest(path)
    assert set(manifest["inputs"]) == {"preprocess", "sft", "reward_server"}
    assert manifest["inputs"]["reward_server"]["path"] == str(server_artifact)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["engine"] == "openrlhf" and metrics["advantage_estimator"] == "group_norm"
    AutoModelForCausalLM.from_pretrained(path / "model")  # as generate and evaluate load it
    shebang, submitted = (path / "launch" / "openrlhf.sh").read_text().split("\n", 1)
    assert shebang == "#!/usr/bin/env bash"
    assert shlex.split(submitted.replace("\\\n", " ")) == ["ray", *args]
    assert grpo.run(cfg) == path  # up to date: nothing is submitted again


def test_a_job_that_saves_no_policy_fails_the_stage(trained, tmp_path, monkeypatch):
    root = trained["sft"].parents[1]
    overrides = [f"paths.root={root}", "grpo.engine=openrlhf", "grpo.rewards=[length_penalty]"]
    overrides.append("grpo.openrlhf.gamma=0.99")  # another artifact than the test above
    reward_server.prepare(compose(["stage=reward_server", *overrides]))
    bin_dir = fake_ray(tmp_path / "bin", tmp_path / "args.json", save=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="without a policy"):
        grpo.run(compose(["stage=grpo", *overrides]))
