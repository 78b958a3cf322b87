"""feedback_rm with LoRA (``feedback_rm.lora_rank``) on the tiny profile, from a feedback artifact
made by the scripted annotator of test_feedback.py: the run is interrupted and resumed, and the
artifact holds the adapter and, as ``model/``, the plain model with it merged in."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from autorule.core.artifacts import artifact_path, read_manifest, work_path
from autorule.data.models import resolve
from autorule.data.pairs import preference_rows
from autorule.rewards.feedback_rm import score_texts, text
from autorule.rewards.registry import REWARDS, RewardContext
from autorule.stages import feedback, feedback_rm
from autorule.training import lora
from e2e.test_feedback import KEY_ENV, Annotator, N, config
from e2e.test_sft import Interrupted, StopAfterSave
from fakeserver import FakeLLMServer

pytestmark = pytest.mark.slow

RANK, ALPHA = 4, 32  # alpha: the stage's default


@pytest.fixture(scope="module")
def annotated(root):
    """The feedback artifact under ``root``: ratings favour the chosen answers, rankings go by
    digest (test_feedback.py's annotator, here with nothing unreadable and no position bias)."""
    cfg = config(root, "stage=feedback")
    rows = preference_rows(artifact_path(cfg, "preprocess") / "test_prefs.parquet", N)
    annotator = Annotator(set(rows["chosen"].astype(str)), "", "")
    with pytest.MonkeyPatch.context() as patch, FakeLLMServer(annotator) as server:
        patch.setenv(KEY_ENV, "sk-test-annotator-0123456789abcdef")
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        return feedback.run(cfg)


class AtTrainBegin(TrainerCallback):
    """Records, when training begins (after a resumed run loaded its checkpoint), the names of
    the parameters that require gradients and the adapter's weights as peft saves them."""

    def __init__(self):
        self.names: list[str] = []
        self.adapter: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from peft import get_peft_model_state_dict

        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.adapter = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}


def test_lora_reward_model_resumes_and_is_merged_into_a_plain_model(root, annotated):
    # Gradient checkpointing as the paper profile runs it: adapters must still get gradients.
    cfg = config(
        root,
        "stage=feedback_rm",
        f"feedback_rm.lora_rank={RANK}",
        "feedback_rm.gradient_checkpointing=true",
    )
    assert read_manifest(annotated)["status"] == "complete"
    with pytest.raises(Interrupted):  # tiny profile: 6 steps, a checkpoint every 3
        feedback_rm.run(cfg, callbacks=[StopAfterSave(3)])
    checkpoint = work_path(artifact_path(cfg, "feedback_rm")) / "checkpoints" / "checkpoint-3"
    at_step_3 = load_file(checkpoint / "adapter_model.safetensors")  # adapters and head
    seen = AtTrainBegin()
    path = feedback_rm.run(cfg, callbacks=[seen])
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3 and metrics["global_step"] == 6
    # The resumed run went on from the checkpoint's adapters and head, not from fresh ones.
    assert seen.adapter.keys() == at_step_3.keys()
    for key, value in at_step_3.items():
        assert torch.equal(seen.adapter[key], value), key

    # Only the adapters and the score head trained: A and B of each of the 7 linear layers of
    # each block, and the head (peft's trainable copy of it).
    init = resolve(cfg, "reward")
    start = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    layers = start.config.num_hidden_layers
    assert len(seen.names) == 2 * 7 * layers + 1
    assert sum("lora_A" in n or "lora_B" in n for n in seen.names) == 2 * 7 * layers
    assert [n for n in seen.names if "lora_" not in n] == [
        "base_model.model.score.modules_to_save.default.weight"
    ]

    # adapter/: peft's files, the score head among the saved weights
    adapter_config = json.loads((path / lora.ADAPTER / "adapter_config.json").read_text())
    assert adapter_config["r"] == RANK and adapter_config["lora_alpha"] == ALPHA
    assert adapter_config["task_type"] == "SEQ_CLS"
    saved = load_file(path / lora.ADAPTER / "adapter_model.safetensors")
    assert any(key.startswith("base_model.model.score.") for key in saved), sorted(saved)
    assert f"{lora.ADAPTER}/adapter_model.safetensors" in read_manifest(path)["files"]

    # model/: a plain sequence-classification model (no adapter layers, from_pretrained loads it)
    merged = AutoModelForSequenceClassification.from_pretrained(path / "model")
    assert not any("lora" in key for key in merged.state_dict())
    assert merged.state_dict().keys() == start.state_dict().keys()
    tokenizer = AutoTokenizer.from_pretrained(path / "model")
    assert merged.config.pad_token_id == tokenizer.pad_token_id is not None

    # Its weights differ from the starting model's by the LoRA delta alone (B A x alpha / rank)
    # on the adapted layers, by training on the head, and not at all elsewhere.
    after, before = merged.state_dict(), start.state_dict()
    moved = {key for key in before if not torch.equal(after[key], before[key])}
    assert "score.weight" in moved and "model.embed_tokens.weight" not in moved
    assert all(key.endswith("proj.weight") for key in moved - {"score.weight"}), moved
    for key in moved - {"score.weight"}:
        name = "base_model.model." + key.removesuffix(".weight")
        delta = saved[f"{name}.lora_B.weight"] @ saved[f"{name}.lora_A.weight"] * ALPHA / RANK
        torch.testing.assert_close(after[key] - before[key], delta, rtol=1e-4, atol=1e-6)
    assert len(moved) == 7 * layers + 1  # every adapted layer moved

    # The reward term (best-of-N's scorer) reads model/ of this config's artifact and scores as
    # the trained peft model does.
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(
        feedback_rm.starting_model(init, tokenizer), str(path / lora.ADAPTER)
    )
    prompts = [f"Question {i}?" for i in range(6)]
    answers = [f"An answer of some length, number {i}." * (1 + i % 3) for i in range(6)]
    template, eos = str(cfg.preprocess.plain_template), tokenizer.eos_token
    texts = [text(template, p, a, eos) for p, a in zip(prompts, answers, strict=True)]
    expected = score_texts(adapted, tokenizer, texts)
    scored = REWARDS["feedback_rm"](RewardContext(cfg))(prompts, answers)
    assert scored == pytest.approx(expected, abs=1e-4)
    assert len({round(x, 3) for x in expected}) > 1  # distinct scores: the comparison can fail
