"""Stage sft end to end on the tiny profile: a few optimizer steps on CPU."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from autorule.core.artifacts import artifact_path, read_manifest, work_path
from autorule.core.config import ConfigError, compose
from autorule.pipeline import run_stage
from autorule.stages import preprocess, rm, sft

pytestmark = pytest.mark.slow


def test_sft_artifact(trained):
    path = trained["sft"]
    manifest = read_manifest(path)
    assert manifest["status"] == "complete"
    metrics = json.loads((path / "metrics.json").read_text())
    assert manifest["metrics"] == metrics
    assert metrics["global_step"] == 8 and metrics["resumed_from_step"] is None
    assert metrics["train_loss_mean_steps"] == 8
    assert metrics["train_loss"] > 0 and metrics["eval_loss"] > 0
    assert manifest["counts"]["train_rows"] == metrics["train_rows"] > 0
    # One copy of the weights: the work folder's checkpoints are gone.
    assert not (path / "checkpoints").exists()
    model = AutoModelForCausalLM.from_pretrained(path / "model")
    tokenizer = AutoTokenizer.from_pretrained(path / "model")
    assert tokenizer.eos_token == "<|end|>" and model.config.vocab_size == len(tokenizer)


class Interrupted(Exception):
    pass


class StopAfterSave(TrainerCallback):
    """Simulates an interruption right after the checkpoint of ``step`` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise Interrupted(f"interrupted after step {state.global_step}")


def test_sft_resumes_after_an_interruption(make_cfg):
    cfg = make_cfg("stage=sft")  # tiny profile: 8 steps, a checkpoint every 4
    preprocess.run(cfg)
    with pytest.raises(Interrupted):
        sft.run(cfg, callbacks=[StopAfterSave(4)])
    # A job killed while writing the next checkpoint leaves it without trainer_state.json (which
    # transformers writes last); the re-run must skip it, not fail on it.
    killed = work_path(artifact_path(cfg, "sft")) / "checkpoints" / "checkpoint-8"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half a file")
    path = sft.run(cfg)  # the same command again
    assert not work_path(path).exists()
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4 and metrics["global_step"] == 8
    # The mean loss covers only the steps this process ran, and says so.
    assert metrics["train_loss_mean_steps"] == 4


def test_sft_through_the_launcher(make_cfg):
    """launcher.num_processes=2 goes through accelerate and the worker entry point (without GPUs
    accelerate starts a single worker, and gradient accumulation follows the running count)."""
    cfg = make_cfg("stage=sft", "launcher.num_processes=2")
    preprocess.run(cfg)
    path = sft.run(cfg)
    saved = (path / "launch" / "config-machine0.yaml").read_text()
    assert "workdir:" in saved and "stage: sft" in saved
    assert read_manifest(path)["metrics"]["global_step"] == 8
    assert (path / "model" / "config.json").exists()


class RecordRun(TrainerCallback):
    """Records the W&B run a stage logs into (opened by transformers' callback on train begin)."""

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        self.name, self.group = wandb.run.name, wandb.run.group


def test_each_training_stage_logs_into_its_own_wandb_run(make_cfg):
    """stage=pipeline trains sft and rm in one process: rm must not log into sft's W&B run.
    WANDB_MODE=disabled (tests/conftest.py) gives a real, offline no-op wandb.run."""
    import wandb

    cfg = make_cfg(
        "stage=pipeline",
        "logger=wandb",
        "experiment_name=e2e",
        "sft.max_steps=2",
        "rm.max_steps=2",
        "rm.init=base",
    )
    preprocess.run(cfg)
    seen = {}
    for stage in (sft, rm):
        record = RecordRun()
        stage.run(cfg, callbacks=[record])
        seen[stage.__name__.rsplit(".", 1)[1]] = (record.name, record.group)
        assert wandb.run is None  # finished with its stage
    # Each run carries its own stage's name; both are grouped by experiment_name.
    overrides = "experiment_name=e2e sft.max_steps=2 rm.max_steps=2 rm.init=base"
    assert seen == {"sft": (f"sft {overrides}", "e2e"), "rm": (f"rm {overrides}", "e2e")}


def test_sft_loss_is_on_the_response_only(trained, tmp_path):
    """In a batch as the trainer collates it, the prompt ``<|user|>...<|assistant|>`` is masked
    out of the loss (label -100) and every response token, eos included, is learned."""
    cfg = compose(["stage=sft", f"paths.root={trained['sft'].parents[1]}"])
    data = trained["preprocess"]
    trainer = sft.build_trainer(cfg, tmp_path, {"preprocess": data})
    tokenizer = trainer.processing_class
    rows = sft.prompt_completion(data / f"{cfg.sft.train_split}.parquet", tokenizer.eos_token)
    n = 4
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    for i, row in enumerate(rows.select(range(n))):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        learned = labels != -100
        real = ids != tokenizer.pad_token_id  # rows of one batch are padded to the longest
        assert row["prompt"].startswith("<|user|>") and row["prompt"].endswith("<|assistant|>")
        assert tokenizer.decode(ids[real & ~learned]) == row["prompt"]
        assert tokenizer.decode(ids[learned]) == row["completion"]
        assert row["completion"].endswith(tokenizer.eos_token)
        assert (labels[learned] == ids[learned]).all()
        assert not learned[: int((real & ~learned).sum())].any()  # the prompt comes first


def test_max_steps_zero_trains_num_train_epochs(trained):
    """sft.max_steps <= 0 means "train num_train_epochs" (conf/stage/sft.yaml); transformers
    alone would read 0 as one step."""
    root = trained["preprocess"].parents[1]
    cfg = compose(
        ["stage=sft", f"paths.root={root}", "sft.max_steps=0", "sft.num_train_epochs=0.25"]
    )
    metrics = json.loads((sft.run(cfg) / "metrics.json").read_text())
    batches = math.ceil(metrics["train_rows"] / 8)  # micro batches of 8, 2 per optimizer step
    assert metrics["global_step"] == math.ceil(0.25 * math.ceil(batches / 2)) > 1


def test_a_pipeline_refuses_a_bad_number_of_a_later_stage_before_running_any(make_cfg):
    cfg = make_cfg("stage=pipeline", "rm.max_steps=1.5", "sft.micro_batch_size=3")
    with pytest.raises(
        ConfigError, match=r"^sft.global_batch_size=16 is not divisible by sft.micro_batch_size=3 x"
    ):
        run_stage(cfg)
    assert not artifact_path(cfg, "preprocess").exists()
    cfg = make_cfg("stage=pipeline", "rm.max_steps=1.5")
    with pytest.raises(
        ConfigError, match=r"^rm.max_steps=1.5 is not allowed: it must be an integer"
    ):
        run_stage(cfg)
    assert not artifact_path(cfg, "preprocess").exists()


def _per_token_losses(model, batch) -> torch.Tensor:
    """Cross-entropy of every learned token (label != -100), in order, as the trainer's loss
    sees them (logits shifted by one)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # as the trainer passes them
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    learned = labels != -100
    losses = torch.nn.functional.cross_entropy(logits[learned], labels[learned], reduction="none")
    return losses


def test_packed_batches_keep_the_per_token_loss_and_restart_positions(trained, tmp_path):
    """sft.packing=true: a packed row (several rows end to end, no padding) gives every response
    token the loss it has in a padded batch of the same rows, so rows do not attend across each
    other; the collator's position ids restart at 0 at each row."""
    root = trained["sft"].parents[1]
    data = {"preprocess": trained["preprocess"]}
    packed = sft.build_trainer(
        compose(["stage=sft", f"paths.root={root}", "sft.packing=true"]), tmp_path / "p", data
    )
    padded = sft.build_trainer(compose(["stage=sft", f"paths.root={root}"]), tmp_path / "u", data)
    assert packed.padding_free and not padded.padding_free
    row = next(r for r in packed.train_dataset if len(set(r["seq_lengths"])) > 1)
    lengths = list(row["seq_lengths"])
    assert len(lengths) > 1 and sum(lengths) == len(row["input_ids"])

    batch = packed.data_collator([row])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    positions = batch["position_ids"][0].tolist()
    assert positions == [p for n in lengths for p in range(n)]

    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    rows = [
        {key: row[key][a : a + n] for key in ("input_ids", "labels")}
        for a, n in zip(starts, lengths, strict=True)
    ]
    padded_batch = padded.data_collator(rows)
    assert (padded_batch["attention_mask"] == 0).any()  # the rows differ in length
    model = padded.model.eval()
    packed_losses = _per_token_losses(model, batch)
    padded_losses = _per_token_losses(model, padded_batch)
    assert packed_losses.shape == padded_losses.shape and len(packed_losses) > 100
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-4, atol=1e-4)
    # Without the restarts the rows would attend to each other and the losses would move.
    crossed = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    assert not torch.allclose(_per_token_losses(model, crossed), padded_losses, atol=1e-3)


def test_padding_free_alone_needs_max_length_null(make_cfg):
    with pytest.raises(ConfigError, match=r"sft.padding_free=true without sft.packing"):
        sft.check(make_cfg("stage=sft", "sft.padding_free=true"))
    sft.check(make_cfg("stage=sft", "sft.padding_free=true", "sft.max_length=null"))
