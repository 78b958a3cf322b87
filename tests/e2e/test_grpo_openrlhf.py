"""grpo.engine=openrlhf end to end, with a stand-in for `ray` that does what the job leaves
behind (a policy in --save_path): the artifact commits it as model/, records the reward server's
artifact as an input, and keeps the submitted command. With the real reward server serving, the
stand-in posts rollouts to --remote_rm_url as OpenRLHF does, and the artifact's training log is
built from the server's session log."""

import json
import logging
import os
import shlex
import socket
import sys

import pytest

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import grpo, reward_server

pytestmark = pytest.mark.slow

# A `ray` that logs its arguments and saves the starting policy as the trained one; with
# `rollouts`, it first posts that many rollouts (a fraction: a job ended mid-rollout) to the
# reward server, one request per micro-batch, and keeps the answers.
FAKE_RAY = """#!{python}
import json, shutil, sys, urllib.request
args = sys.argv[1:]
with open({log!r}, "w") as f:
    json.dump(args, f)
value = lambda flag: args[args.index(flag) + 1]
rollout = int(value("--rollout_batch_size")) * int(value("--n_samples_per_prompt"))
micro = int(value("--micro_rollout_batch_size"))
answers, prompt = [], "<|user|>Say something.<|assistant|>"
for start in range(0, int({rollouts} * rollout), micro):
    responses = [" word" * (1 + (start + i) % 7) for i in range(micro)]
    body = {{"query": [prompt + r for r in responses], "prompts": [prompt] * micro}}
    request = urllib.request.Request(
        value("--remote_rm_url"), json.dumps(body).encode(),
        headers={{"Content-Type": "application/json"}},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answers.append(json.load(response))
with open({log!r} + ".answers", "w") as f:
    json.dump(answers, f)
if {save}:
    shutil.copytree(value("--pretrain"), value("--save_path"))
"""


def fake_ray(folder, log, save=True, rollouts=0):
    folder.mkdir(exist_ok=True)
    script = folder / "ray"
    script.write_text(
        FAKE_RAY.format(python=sys.executable, log=str(log), save=save, rollouts=rollouts)
    )
    script.chmod(0o755)
    return folder


def test_the_jobs_policy_becomes_the_grpo_artifacts_model(trained, tmp_path, monkeypatch, caplog):
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
    with caplog.at_level(logging.WARNING, logger="autorule.stages.grpo"):
        path = grpo.run(cfg)

    args = json.loads(log.read_text())
    assert args[:2] == ["job", "submit"] and "openrlhf.cli.train_ppo_ray" in args
    assert args[args.index("--remote_rm_url") + 1] == record["url"]
    manifest = read_manifest(path)
    assert set(manifest["inputs"]) == {"preprocess", "sft", "reward_server"}
    assert manifest["inputs"]["reward_server"]["path"] == str(server_artifact)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["engine"] == "openrlhf" and metrics["advantage_estimator"] == "group_norm"
    # No reward server served this artifact: no training log, and a warning that says why.
    assert metrics["log_source"] is None and not (path / grpo.LOG_HISTORY).exists()
    assert "no training log" in caplog.text and "no reward server of this artifact" in caplog.text
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


def test_the_reward_servers_log_of_the_jobs_window_becomes_the_training_log(
    trained, tmp_path, monkeypatch
):
    """The real server scores what the stand-in job posts (2.5 rollouts); grpo keeps the rows of
    the job's window as log_history.jsonl, which evaluate's hacking view reads, and the server's
    artifact stays up to date after serving."""
    import requests

    from autorule.core.artifacts import content_hash, hash_files, is_up_to_date
    from autorule.evaluation import hacking
    from autorule.rewards.registry import close_all

    with socket.socket() as probe:  # a free port for the server and --remote_rm_url
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    overrides = [
        f"paths.root={trained['sft'].parents[1]}",
        "grpo.engine=openrlhf",
        "grpo.rewards=[length_penalty]",
        "rewards.length_penalty.coef=0.5",  # artifacts of their own
        "rewards.length_penalty.norm=4",  # lengths of 1 to 7 tokens give distinct rewards
        "reward_server.host=127.0.0.1",
        "reward_server.advertise_host=127.0.0.1",
        f"reward_server.port={port}",
    ]
    server_cfg = compose(["stage=reward_server", *overrides])
    server_artifact, inputs = reward_server.prepare(server_cfg)
    server, funcs, _ = reward_server.build_server(server_cfg, inputs, artifact=server_artifact)
    log = tmp_path / "ray-args.json"
    monkeypatch.setenv(
        "PATH", f"{fake_ray(tmp_path / 'bin', log, rollouts=2.5)}{os.pathsep}{os.environ['PATH']}"
    )
    prompt = "<|user|>Before the job.<|assistant|>"
    with server:
        # Scored before the job was submitted: outside its window.
        early = {"query": [prompt + " early"], "prompts": [prompt]}
        assert requests.post(server.url(), json=early, timeout=60).status_code == 200
        path = grpo.run(compose(["stage=grpo", *overrides]))
    close_all(funcs)

    cfg = compose(["stage=grpo", *overrides])
    size = int(cfg.grpo.prompts_per_rollout) * int(cfg.grpo.num_generations)
    answers = json.loads((tmp_path / "ray-args.json.answers").read_text())
    rewards = [r for answer in answers for r in answer["rewards"]]
    terms = [v for answer in answers for v in answer["extra_logs"]["length_penalty"]]
    assert len(rewards) == int(2.5 * size) and len(set(rewards)) > 1
    rows = hacking.read_log(path / grpo.LOG_HISTORY)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert [row["completions"] for row in rows] == [size, size, size // 2]
    assert [row.get("partial", False) for row in rows] == [False, False, True]
    for i, row in enumerate(rows):
        part = slice(i * size, (i + 1) * size)
        assert row["reward"] == pytest.approx(sum(rewards[part]) / len(rewards[part]))
        mean = sum(terms[part]) / len(terms[part])
        assert row["rewards/length_penalty/mean"] == pytest.approx(mean)
    series = hacking.log_series(rows)
    assert series["reward"]["step"] == [1.0, 2.0, 3.0]
    assert series["rewards/length_penalty/mean"]["value"] == [
        row["rewards/length_penalty/mean"] for row in rows
    ]
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["log_source"] == "reward_server" and metrics["logged_rollouts"] == 3
    assert metrics["reward_length_penalty_end"] == rows[-1]["rewards/length_penalty/mean"]
    assert "llm_usage" not in metrics  # no term of this server calls an LLM
    manifest = read_manifest(path)
    assert manifest["log_source"] == "reward_server"
    assert not (path / grpo.RULE_TABLE).exists()  # the rules term is not served

    # The session's files do not make the committed server artifact look changed.
    served = read_manifest(server_artifact)
    [session] = (server_artifact / "sessions").iterdir()
    assert len((session / "scores.jsonl").read_text().splitlines()) == 1 + len(answers)
    assert is_up_to_date(server_cfg, "reward_server") == (True, "complete and up to date")
    recomputed = content_hash(served["config_hash"], hash_files(server_artifact))
    assert recomputed == served["artifact_hash"] == manifest["inputs"]["reward_server"]["hash"]
    assert is_up_to_date(cfg, "grpo")[0]
