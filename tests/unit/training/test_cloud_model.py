"""The CLoud reward model on the tiny LM: where the score is read, the head, saving and loading,
the token layout of critique SFT, and predict_reward (with transformers and a stand-in vLLM)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, set_seed

from autorule.core.config import compose
from autorule.data.models import load_tokenizer, resolve
from autorule.stages.cloud import pair_columns
from autorule.training import cloud_model
from autorule.training.cloud_data import CloudFormat, PairCollator, collate, encode_all, join
from autorule.training.cloud_loss import IGNORE_INDEX
from autorule.training.cloud_model import (
    CloudRewardModel,
    GenerationSettings,
    generate_critiques,
    predict_reward,
)

X = IGNORE_INDEX
PROMPTS = ["Name a prime.", "Say hi.", "How do I boil an egg?"]
ANSWERS = ["Seven.", "Hi there, how can I help you today?", "Boil it for nine minutes."]
CRITIQUES = ["Correct and short.", "Friendly, on point.", "Clear, but no reason is given."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = compose([f"paths.root={tmp_path_factory.mktemp('out')}"])
    return cfg, load_tokenizer(cfg), CloudFormat.from_mapping(cfg.cloud.format)


def new_model(cfg, fmt, mode="cloud", head_dropout=None, seed=0) -> CloudRewardModel:
    set_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(resolve(cfg, "policy"))
    return CloudRewardModel.from_lm(lm, mode, fmt, 512, head_dropout).eval()


def test_reward_is_the_head_at_the_last_non_pad_token(tiny):
    cfg, tokenizer, fmt = tiny
    model = new_model(cfg, fmt)
    batch = collate(encode_all(tokenizer, fmt, PROMPTS, ANSWERS, CRITIQUES, 512), 0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # padded: the rows differ in length
    with torch.no_grad():
        rewards = model(input_ids=ids, attention_mask=mask).rewards
        hidden = model.lm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows, last = torch.arange(len(ids)), mask.sum(dim=-1) - 1
        at_last = model.reward_head(hidden[rows, last])
        before = model.reward_head(hidden[rows, last - 1])
        alone = [
            model(
                input_ids=ids[i : i + 1, : last[i] + 1],
                attention_mask=mask[i : i + 1, : last[i] + 1],
            ).rewards.item()
            for i in range(len(ids))
        ]
    assert rewards.shape == (3,)
    assert (ids[rows, last] == tokenizer.eos_token_id).all()  # each sequence ends with eos
    torch.testing.assert_close(rewards, at_last)
    assert not torch.allclose(rewards, before)
    torch.testing.assert_close(rewards, torch.tensor(alone))  # padding changes nothing


def test_head_is_dropout_linear_tanh_dropout_linear(tiny):
    cfg, _, fmt = tiny
    model = new_model(cfg, fmt)
    head, hidden_size = model.reward_head, model.config.lm_config.hidden_size
    assert (head.dense.in_features, head.dense.out_features) == (hidden_size, hidden_size)
    assert (head.out_proj.in_features, head.out_proj.out_features) == (hidden_size, 1)
    assert head.dropout.p == model.config.lm_config.attention_dropout  # the CLoud code's choice
    x = torch.randn(4, hidden_size)
    expected = head.out_proj(torch.tanh(head.dense(x))).squeeze(-1)
    torch.testing.assert_close(head(x), expected)
    assert new_model(cfg, fmt, head_dropout=0.25).reward_head.dropout.p == 0.25


def test_saved_model_loads_with_auto_model_and_scores_the_same(tiny, tmp_path):
    cfg, tokenizer, fmt = tiny
    model = new_model(cfg, fmt)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CloudRewardModel)
    assert loaded.config.mode == "cloud" and loaded.text_format == fmt
    assert loaded.config.max_sequence_length == 512
    batch = collate(encode_all(tokenizer, fmt, PROMPTS, ANSWERS, CRITIQUES, 512), 0)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        after = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(before.rewards, after.rewards)
    # The LM head still writes text.
    ids = torch.tensor([tokenizer("<|user|>Hi<|assistant|>")["input_ids"]])
    out = loaded.lm.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_tying_survives_saving(tmp_path, tied):
    """Llama-3-8B's LM head is its own matrix; the tiny model's is the embedding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    fmt = CloudFormat("{prompt}{response}", "{request}", "Critique it.")
    model = CloudRewardModel.from_lm(LlamaForCausalLM(config), "cloud", fmt, 64)
    model.save_pretrained(tmp_path)
    loaded = CloudRewardModel.from_pretrained(tmp_path)
    for m in (model, loaded):
        same = m.lm.lm_head.weight.data_ptr() == m.lm.model.embed_tokens.weight.data_ptr()
        assert same == tied
    torch.testing.assert_close(loaded.lm.lm_head.weight, model.lm.lm_head.weight)


def test_join_labels_critique_and_eos_and_cuts_the_critique_end():
    assert join([1, 2, 3], [4, 5], 9, 10).labels == [X, X, X, 4, 5, 9]
    cut = join([1, 2, 3], [4, 5, 6], 9, 6)
    assert (cut.input_ids, cut.labels, cut.truncated) == (
        [1, 2, 3, 4, 5, 9],
        [X, X, X, 4, 5, 9],
        True,
    )
    classic = join([1, 2, 3, 4, 5], None, 9, 4)  # a prefix too long loses its start
    assert (classic.input_ids, classic.labels) == ([3, 4, 5, 9], [X, X, X, X])


def test_critique_sft_learns_only_the_critique(tiny):
    """Phase 1's batches: chosen then rejected rows, labels on the critique and eos only."""
    cfg, tokenizer, fmt = tiny
    import pandas as pd

    pairs = pd.DataFrame(
        {
            "prompt": PROMPTS[:2],
            "chosen": ANSWERS[:2],
            "rejected": ["Nine.", "No."],
            "chosen_feedback": CRITIQUES[:2],
            "rejected_feedback": ["Nine is not prime.", "Curt."],
        }
    )
    columns, _ = pair_columns(tokenizer, fmt, pairs, 512, with_critiques=True)
    rows = [dict(zip(columns, v, strict=True)) for v in zip(*columns.values(), strict=True)]
    batch = PairCollator(tokenizer.pad_token_id)(rows)
    feedback = [*pairs["chosen_feedback"], *pairs["rejected_feedback"]]
    answers = [*pairs["chosen"], *pairs["rejected"]]
    for i, (ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
        learned = labels[labels != X].tolist()
        assert learned[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(learned[:-1]) == feedback[i]
        first = int((labels != X).nonzero()[0])
        prompt = fmt.critique_prompt(PROMPTS[i % 2], answers[i])
        assert tokenizer.decode(ids[:first]) == prompt  # all of it, none learned
        assert (labels[:first] == X).all()


def test_predict_reward_gives_one_critique_and_one_reward_each(tiny):
    cfg, tokenizer, fmt = tiny
    model = new_model(cfg, fmt)
    settings = GenerationSettings(max_new_tokens=5, batch_size=2, engine="hf")
    rewards, critiques = predict_reward(model, tokenizer, PROMPTS, ANSWERS, settings)
    assert len(rewards) == len(critiques) == 3
    assert all(isinstance(r, float) for r in rewards)
    # Scoring the generated critiques as given reproduces the rewards.
    again, same = predict_reward(model, tokenizer, PROMPTS, ANSWERS, settings, critiques=critiques)
    assert same == critiques and again == pytest.approx(rewards, abs=1e-5)
    other, _ = predict_reward(model, tokenizer, PROMPTS, ANSWERS, settings, critiques=CRITIQUES)
    assert other != pytest.approx(rewards, abs=1e-5)


def test_classic_model_scores_the_answer_without_critique(tiny):
    cfg, tokenizer, fmt = tiny
    model = new_model(cfg, fmt, mode="classic")
    rewards, critiques = predict_reward(model, tokenizer, PROMPTS, ANSWERS)
    assert critiques == ["", "", ""]
    batch = collate(encode_all(tokenizer, fmt, PROMPTS, ANSWERS, None, 512), 0)
    with torch.no_grad():
        direct = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert rewards == pytest.approx(direct.rewards.tolist(), abs=1e-5)


class FakeVLLM:
    """Stands in for the vllm module: records the engine and sampling settings, answers each
    prompt with a fixed critique, eos, and tokens after eos that must be dropped."""

    def __init__(self, tokenizer):
        self.tokenizer, self.engines, self.params, self.prompts = tokenizer, [], [], []

    def LLM(self, **kwargs):  # noqa: N802 - vllm's name
        self.engines.append(
            {**kwargs, "has_config": (Path(kwargs["model"]) / "config.json").is_file()}
        )
        return self

    def SamplingParams(self, **kwargs):  # noqa: N802 - vllm's name
        self.params.append(kwargs)
        return kwargs

    def generate(self, prompts, params):
        self.prompts += prompts
        tokens = self.tokenizer("Looks right.", add_special_tokens=False)["input_ids"]
        tokens += [self.tokenizer.eos_token_id] + tokens
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens)]) for _ in prompts]


def test_vllm_writes_the_critiques_when_asked(tiny, monkeypatch):
    cfg, tokenizer, fmt = tiny
    fake = FakeVLLM(tokenizer)
    monkeypatch.setattr("autorule.llm.vllm_offline.import_vllm", lambda: fake)
    model = new_model(cfg, fmt)
    settings = GenerationSettings(max_new_tokens=7, engine="vllm")
    rewards, critiques = predict_reward(model, tokenizer, PROMPTS, ANSWERS, settings)
    assert critiques == ["Looks right."] * 3 and len(rewards) == 3
    # The LM alone was saved for the engine, which decodes greedily with CLoud's penalty.
    assert fake.engines[0]["has_config"]
    assert fake.params == [
        {
            "temperature": 0.0,
            "max_tokens": 7,
            "repetition_penalty": 1.01,
            "stop_token_ids": [tokenizer.eos_token_id],
        }
    ]
    prompts = [fmt.critique_prompt(p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    assert [p["prompt_token_ids"] for p in fake.prompts] == tokenizer(prompts)["input_ids"]


def test_auto_engine_is_transformers_without_vllm_or_gpu(monkeypatch, tiny):
    cfg, tokenizer, fmt = tiny
    monkeypatch.setattr(cloud_model, "vllm_available", lambda: False)
    assert cloud_model.resolve_engine("auto") == "hf"
    model = new_model(cfg, fmt)
    texts = generate_critiques(
        model.lm, tokenizer, ["<|user|>Hi<|assistant|>"], 512, GenerationSettings(max_new_tokens=3)
    )
    assert len(texts) == 1
    with pytest.raises(ValueError, match="engine must be one of"):
        GenerationSettings(engine="sglang")


def test_a_format_without_its_placeholders_is_refused_naming_the_key():
    good = {"answer": "{prompt} {response}", "critique": "{request}", "request": "Critique it."}
    assert CloudFormat.from_mapping(good).critique_prompt("P", "R") == "P RCritique it."
    with pytest.raises(ValueError, match=r"cloud.format.answer .*\['response'\]"):
        CloudFormat.from_mapping({**good, "answer": "{prompt}"})
    with pytest.raises(ValueError, match="cloud.format.critique"):
        CloudFormat.from_mapping({**good, "critique": "Now critique."})
