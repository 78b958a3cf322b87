"""The grpo stage's configuration: the paper's settings, the experiments, what its hash covers,
the SLURM script with a served judge and SLURM sweeps (dry runs: nothing trains)."""

import json
import shlex
import subprocess
import sys

import pytest

from autorule.core.artifacts import artifact_path, config_hash, input_path
from autorule.core.config import REPO_ROOT, ConfigError, compose
from autorule.stages import grpo
from unit.test_slurm import printed, run_script


def dry_run(tmp_path, capsys, *overrides):
    cfg = compose(["stage=grpo", *overrides, "dry_run=true", f"paths.root={tmp_path}"])
    grpo.run(cfg)
    assert not any(tmp_path.iterdir()), "a dry run must not write anything"
    return capsys.readouterr().out


def test_paper_dry_run_shows_the_released_settings(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, "experiment=autorule_uf", "launcher.num_processes=8")
    command = out.splitlines()[1]
    assert "--use_deepspeed --deepspeed_config_file" in command and "zero3.json" in command
    assert "--mixed_precision bf16" in command
    assert "\n  global_batch=128 (micro 4 x 8 processes x accumulation 4)\n" in out
    assert "\n  rewards: rm x 1.0, rules x 1.0\n" in out
    assert "rollout: 1024 prompts x 2 samples = 2048 completions" in out
    for line in (
        "num_generations=2",
        "generation_batch_size=2048",
        "max_completion_length=1024",
        "temperature=1.0",
        "beta=0.001",
        "epsilon=0.2",
        "learning_rate=5e-07",
        "lr_scheduler_type=constant_with_warmup",
        "warmup_steps=0.03",
        "max_grad_norm=1.0",
        "num_train_epochs=1.0",
        "num_iterations=1",
        "scale_rewards=group",
        "bf16=True",
        "adam_beta1=0.9",
        "adam_beta2=0.95",
        "seed=42",
    ):
        assert f"\n  {line}\n" in out, line
    assert "\n  input rm -> " in out and "\n  input extract -> " in out


@pytest.mark.parametrize(
    "experiment, rewards",
    [
        ("grpo_baseline", ["rm"]),
        ("length_penalty", ["rm", "length_penalty"]),
        ("length_control", ["rm"]),
        ("autorule_uf", ["rm", "rules"]),
        ("autorule_mt", ["rm", "rules"]),
        ("rubric_addition", ["rubric"]),
        ("rubric_prometheus", ["rubric"]),
    ],
)
def test_experiments_pick_their_reward_terms(experiment, rewards):
    cfg = compose([f"experiment={experiment}"])
    assert list(cfg.grpo.rewards) == rewards
    assert cfg.dataset.name == "uf"  # every GRPO run trains on UltraFeedback prompts


def test_length_control_changes_what_the_released_script_changes():
    base, control = compose(["experiment=grpo_baseline"]), compose(["experiment=length_control"])
    assert (control.grpo.learning_rate, control.grpo.kl_coef, control.grpo.temperature) == (
        3e-7,
        0.005,
        0.9,
    )
    for key in ("num_generations", "prompts_per_rollout", "global_batch_size", "clip_range"):
        assert control.grpo[key] == base.grpo[key], key


def test_only_used_terms_and_the_judge_they_need_are_hashed(tmp_path):
    root = f"paths.root={tmp_path}"
    baseline = ["experiment=grpo_baseline", root]
    h = config_hash(compose(baseline), "grpo")
    assert h == config_hash(compose([*baseline, "judge.llm.model=another-judge"]), "grpo")
    assert h == config_hash(compose([*baseline, "rewards.rules.scale=5"]), "grpo")
    assert "extract" not in grpo.SPEC.inputs_for(compose(baseline))

    rules = ["experiment=autorule_uf", root]
    h = config_hash(compose(rules), "grpo")
    assert h != config_hash(compose([*rules, "judge.llm.model=another-judge"]), "grpo")
    assert h != config_hash(compose([*rules, "rewards.rules.scale=5"]), "grpo")
    # The judge's transport never moves it.
    assert h == config_hash(compose([*rules, "judge.llm.max_concurrency=3"]), "grpo")
    assert "extract" in grpo.SPEC.inputs_for(compose(rules))


def test_autorule_mt_reads_the_rules_extracted_from_mt_bench(tmp_path):
    cfg = compose(["stage=grpo", "experiment=autorule_mt", f"paths.root={tmp_path}"])
    rules = input_path(cfg, "grpo", "extract")
    assert rules.parent.name == "extract" and rules.name.startswith("mt-")
    assert rules == artifact_path(
        compose(["experiment=autorule_mt", "dataset=mt", f"paths.root={tmp_path}"]), "extract"
    )
    assert input_path(cfg, "grpo", "sft").name.startswith("uf-")


@pytest.mark.parametrize("data", ["addition", "prometheus"])
def test_rubric_experiments_use_the_recipe_settings_and_their_rubric_data(tmp_path, data):
    cfg = compose(["stage=grpo", f"experiment=rubric_{data}", f"paths.root={tmp_path}"])
    section = cfg.grpo
    # tinker-cookbook's rubric recipe: group size 4, learning rate 1e-5, LoRA rank 32, no KL.
    assert (section.num_generations, section.learning_rate, section.lora_rank) == (4, 1e-5, 32)
    assert (section.kl_coef, section.prompts_per_rollout, section.global_batch_size) == (
        0,
        100,
        400,
    )
    assert section.rubric_dataset == data and section.prompt_split == "train"
    assert grpo.SPEC.inputs_for(cfg) == ("preprocess", "sft")
    assert input_path(cfg, "grpo", "preprocess").name.startswith(f"{data}-")
    assert input_path(cfg, "grpo", "preprocess") == artifact_path(
        compose([f"experiment=rubric_{data}", f"dataset={data}", f"paths.root={tmp_path}"]),
        "preprocess",
    )
    assert input_path(cfg, "grpo", "sft").name.startswith("uf-")
    # The addition demo's headline figure is its test reward, evaluated every 20 steps.
    expected = ("test", 20) if data == "addition" else (None, None)
    assert (section.eval_split, section.eval_steps) == expected


def test_a_rubric_dry_run_names_the_prompts_the_grader_and_the_adapter(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, "experiment=rubric_addition", "profile=tiny")
    assert "\n  rewards: rubric x 1.0\n" in out
    assert "\n  prompts: rubric dataset addition, split train\n" in out
    assert "\n  rubric grader: backend=HFLLM model=tiny\n" in out
    assert "\n  LoRA: rank 32, alpha 32, all linear layers\n" in out
    assert "\n  input preprocess -> " in out and "preprocess/addition-" in out


def test_rubric_settings_are_hashed_only_when_the_rubric_term_is_used(tmp_path):
    root = f"paths.root={tmp_path}"
    baseline = ["experiment=grpo_baseline", root]
    h = config_hash(compose(baseline), "grpo")
    for change in (
        "rubric.grader.model=other",
        "rewards.rubric.format_coef=0.5",
        "rubric.prompt=x",
    ):
        assert h == config_hash(compose([*baseline, change]), "grpo"), change
    assert h == config_hash(compose([*baseline, "grpo.lora_alpha=8"]), "grpo")  # no adapter

    rubric = ["experiment=rubric_addition", root]
    h = config_hash(compose(rubric), "grpo")
    for change in (
        "rubric.grader.model=other",
        "rewards.rubric.format_coef=0.5",
        "rubric.prompt='{conversation}{answer}{rubric}{format_instruction}'",
        "grpo.lora_alpha=8",
        "grpo.rubric_dataset=prometheus",
    ):
        assert h != config_hash(compose([*rubric, change]), "grpo"), change
    for same in (
        "rubric.grader.max_concurrency=3",
        "rubric.grader.base_url=http://elsewhere:1/v1",
        "rubric.debug_examples=4",
    ):
        assert h == config_hash(compose([*rubric, same]), "grpo"), same


def test_a_rubric_file_is_hashed_by_its_content_not_its_path(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    line = json.dumps(
        {"convo": [{"role": "user", "content": "Hi"}], "rubric_items": [{"rubric_str": "Kind?"}]}
    )
    first.write_text(line + "\n")
    second.write_text(line + "\n")
    base = ["grpo.rewards=[rubric]", f"paths.root={tmp_path}"]
    cfg = compose([*base, f"grpo.rubric_file={first}"])
    assert grpo.SPEC.inputs_for(cfg) == ("sft",)  # no preprocess artifact is read
    h = config_hash(cfg, "grpo")
    assert h == config_hash(compose([*base, f"grpo.rubric_file={second}"]), "grpo")
    second.write_text(line + "\n" + line + "\n")
    assert h != config_hash(compose([*base, f"grpo.rubric_file={second}"]), "grpo")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["grpo.rewards=[rubric]"], "set grpo.rubric_dataset"),
        (
            ["grpo.rubric_dataset=addition", "grpo.rubric_file=x.jsonl"],
            "both name the rubric prompts",
        ),
        (["grpo.rubric_dataset=uf"], "grpo.rubric_dataset"),
        (["grpo.rubric_file=/no/such/file.jsonl"], "is not a file"),
        (["grpo.lora_rank=0"], "grpo.lora_rank"),
        (["grpo.eval_split=test_prefs"], "evaluation needs both"),
        (["grpo.eval_steps=5"], "evaluation needs both"),
    ],
)
def test_rubric_and_lora_settings_that_cannot_work_are_refused(tmp_path, overrides, message):
    cfg = compose(["stage=grpo", f"paths.root={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=message):
        grpo.check(cfg)


@pytest.mark.parametrize(
    "history, start, end",
    [
        (
            [
                {"rewards/rm/mean": 0.1, "reward": 1},
                {"loss": 2},
                {"rewards/rm/mean": 0.7, "reward": 3},
            ],
            0.1,
            0.7,
        )
    ],
)
def test_reward_summary_reads_the_first_and_last_logged_means(history, start, end):
    summary = grpo.reward_summary(history, ["rm", "rules"])
    assert (summary["reward_rm_start"], summary["reward_rm_end"]) == (start, end)
    assert (summary["reward_start"], summary["reward_end"]) == (1, 3)
    assert summary["reward_rules_start"] is None


def test_reward_summary_reads_the_held_out_evaluations_when_there_were_any():
    history = [
        {"rewards/rubric/mean": 0.1, "reward": 0.1},
        {"eval_rewards/rubric/mean": 0.3, "eval_reward": 0.3},
        {"rewards/rubric/mean": 0.2, "reward": 0.2},
        {"eval_rewards/rubric/mean": 0.9, "eval_reward": 0.9},
    ]
    summary = grpo.reward_summary(history, ["rubric"])
    assert (summary["eval_reward_rubric_start"], summary["eval_reward_rubric_end"]) == (0.3, 0.9)
    assert (summary["eval_reward_start"], summary["eval_reward_end"]) == (0.3, 0.9)
    assert (summary["reward_start"], summary["reward_end"]) == (0.1, 0.2)
    assert "eval_reward_start" not in grpo.reward_summary(history[::2], ["rubric"])


def test_rule_table_has_each_rule_at_the_start_and_the_end():
    history = [
        {"rules/0": 0.25, "rules/1": 1.0},
        {"rules/0": 0.5},
        {"rules/0": 0.75, "rules/1": 0.5},
    ]
    assert grpo.rule_table(history, ["Be brief.", "Be kind."]) == [
        {"index": 0, "rule": "Be brief.", "start": 0.25, "end": 0.75},
        {"index": 1, "rule": "Be kind.", "start": 1.0, "end": 0.5},
    ]


def test_bad_generation_settings_fail_early():
    section = dict(compose([]).grpo)
    with pytest.raises(ValueError, match="num_generations=1"):
        grpo.trainer_args({**section, "num_generations": 1})
    with pytest.raises(ValueError, match="reward_weights has 1 values for 3 terms"):
        grpo.trainer_args({**section, "reward_weights": [1.0]})


# --------------------------------------------------------------------------------------------
# SLURM


def test_grpo_script_serves_the_judge_on_its_own_gpus(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    result = run_script(tmp_path, "grpo", env, "experiment=autorule_uf")
    assert result.returncode == 0, result.stderr
    serve, _, rest = result.stdout.partition("\n")
    serve = shlex.split(serve)
    assert serve[0] == "CUDA_VISIBLE_DEVICES=4,5,6,7" and serve[1:3] == ["vllm", "serve"]
    assert serve[3] == compose(["experiment=autorule_uf"]).judge.llm.model
    assert "--data-parallel-size" in serve and serve[serve.index("--data-parallel-size") + 1] == "4"
    first, _, out = rest.partition("\n")
    cmd = shlex.split(first)
    assert "launcher.num_processes=4" in cmd and "experiment=autorule_uf" in cmd
    assert "llm@judge.llm=openai" in cmd and "judge.llm.base_url=http://" in " ".join(cmd)
    assert "\n  global_batch=128 (micro 4 x 4 processes x accumulation 8)\n" in out


def test_grpo_script_without_rules_trains_on_every_gpu(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    result = run_script(tmp_path, "grpo", env, "experiment=grpo_baseline")
    assert result.returncode == 0, result.stderr
    cmd, out = printed(result)
    assert "vllm" not in result.stdout.splitlines()[0]
    assert "launcher.num_processes=8" in cmd and not any("judge" in a for a in cmd)


def test_sweeps_go_to_slurm_through_submitit(tmp_path):
    """`-m hydra/launcher=submitit_slurm` (the slurm extra) submits one job per run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autorule",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=8",
            "hydra.launcher.timeout_min=2880",
            "stage=grpo",
            "experiment=autorule_uf",
            "--cfg",
            "hydra",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in (
        result.stdout
    )
    for line in ("partition: gpu", "gpus_per_node: 8", "timeout_min: 2880"):
        assert line in result.stdout


def test_paper_dry_run_shows_the_paper_judge(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, "experiment=autorule_uf", "profile=paper")
    assert "\n  judge: mode=generate backend=OpenAICompatLLM " in out
    assert (
        "\n  judge prompts: paper (conversation shown policy); truncation=released at "
        "max_input_tokens=1024; parse=contains\n"
    ) in out
    plain = dry_run(tmp_path, capsys, "grpo.rewards=[rules]")
    assert (
        "judge prompts: detailed (conversation shown labelled); truncation=inside_response" in plain
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("judge.truncation=left", "judge.truncation"),
        ("judge.parse=regex", "judge.parse"),
        ("judge.max_unparsed_share=1.5", "judge.max_unparsed_share"),
        ("judge.max_failed_share=-0.1", "judge.max_failed_share"),
        ("judge.max_input_tokens=-5", "judge.max_input_tokens"),
        ("judge.prompts.conversation_format=xml", "judge.prompts.conversation_format"),
        ("judge.prompts.generate=no placeholders", "judge.prompts.generate"),
        ("judge.choices=[Yes,Yep]", "judge.choices"),
    ],
)
def test_judge_keys_are_checked_before_anything_loads(tmp_path, override, key):
    cfg = compose(["stage=grpo", "grpo.rewards=[rules]", override, f"paths.root={tmp_path}"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        grpo.check(cfg)


def test_the_steps_that_trained_with_failed_verdicts_are_listed():
    history = [
        {"step": 1, "judge/failed": 0.0, "rules/0": 0.5},
        {"step": 2, "judge/failed": 0.25, "rules/0": 0.4},
        {"step": 2, "train_runtime": 3.0},  # the final summary entry
        {"step": 3, "judge/failed": 0.0},
        {"step": 4, "judge/failed": 1 / 16},
    ]
    assert grpo.steps_with_failed_verdicts(history) == [2, 4]


def served_artifact(folder, rules, sessions):
    """A reward_server artifact's files: server.json and, per session, score rows and usage."""
    folder.mkdir()
    (folder / "server.json").write_text(json.dumps({"terms": ["rules"], "rules": rules}))
    for name, (rows, usage) in sessions.items():
        session = folder / "sessions" / name
        session.mkdir(parents=True)
        (session / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if usage is not None:
            (session / "llm_usage.json").write_text(json.dumps(usage))
    return folder


def test_openrlhf_log_comes_from_the_servers_rows_of_the_jobs_window(tmp_path, caplog):
    cfg = compose(
        [
            "stage=grpo",
            "grpo.engine=openrlhf",
            "grpo.rewards=[rules]",
            "grpo.prompts_per_rollout=2",
            "grpo.num_generations=2",
        ]
    )

    def row(time, n, rule0, failed=0.0):
        return {
            "time": time,
            "completions": n,
            "reward": rule0,
            "rewards/rules/mean": rule0,
            "rules/0": rule0,
            "rules/1": 1.0,
            "judge/failed": failed,
        }

    usage = {"judge.llm": {"calls": 12, "cost_usd": 0.25}}
    rules = ["Be brief.", "Be kind."]
    server = served_artifact(
        tmp_path / "server",
        rules,
        {
            "old": ([row(1.0, 4, 0.9)], {"judge.llm": {"calls": 99}}),  # an earlier run's
            "now": ([row(10.0, 2, 0.0), row(11.0, 2, 1.0), row(12.0, 2, 0.5, failed=0.5)], usage),
        },
    )
    workdir = tmp_path / "grpo"
    workdir.mkdir()
    metrics = grpo.server_log(cfg, workdir, server, start=5.0, end=20.0)
    history = [json.loads(line) for line in (workdir / grpo.LOG_HISTORY).read_text().splitlines()]
    steps = [(r["step"], r["completions"], r["rules/0"]) for r in history]
    assert steps == [(1, 4, 0.5), (2, 2, 0.5)]
    assert history[1]["partial"] is True and "partial" not in history[0]
    assert metrics["log_source"] == "reward_server" and metrics["logged_rollouts"] == 2
    assert metrics["llm_usage"] == usage  # only the session that scored in the window
    assert metrics["steps_with_failed_verdicts"] == [2]
    table = json.loads((workdir / grpo.RULE_TABLE).read_text())
    assert [(t["rule"], t["start"], t["end"]) for t in table] == [
        ("Be brief.", 0.5, 0.5),
        ("Be kind.", 1.0, 1.0),
    ]

    # Nothing scored in the window: no log, and the warning says why.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert grpo.server_log(cfg, empty, server, start=30.0, end=40.0) == {"log_source": None}
    assert not (empty / grpo.LOG_HISTORY).exists()
    assert "not this artifact's" in caplog.text
