"""The CLoud reward model: a causal LM that critiques an answer, and a reward head that scores it.

    from autorule.training.cloud_model import CloudRewardModel, predict_reward
    model = CloudRewardModel.from_pretrained("<cloud artifact>/model")   # or AutoModel
    rewards, critiques = predict_reward(model, tokenizer, prompts, responses)

Architecture (Ankner et al. 2024, arXiv 2408.11791, and its released code): the LM's last hidden
state at the last non-pad token goes through dropout, a hidden -> hidden linear layer, tanh,
dropout and a hidden -> 1 linear layer. The dropout is the LM's attention dropout unless
``head_dropout`` says otherwise. The LM keeps its head (``model.lm``), so the same weights write
the critique and score it.

Inference (:func:`predict_reward`): greedy critique generation (up to 1,024 new tokens,
repetition penalty 1.01: the CLoud code's defaults) from ``answer + critique opening``, then one
forward pass over ``answer + critique opening + critique + eos`` read at its last token. A
``classic`` model skips the critique and scores ``answer + eos``. The texts follow the format the
model was trained with, saved in its config (:mod:`autorule.training.cloud_data`).

The config class is registered with ``AutoConfig`` and the model with ``AutoModel`` when this
module is imported, so ``AutoModel.from_pretrained(folder)`` loads a saved CLoud model too.
"""

from __future__ import annotations

import copy
import gc
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import ModelOutput

from autorule.training.cloud_data import CloudFormat, Encoded, collate, join, token_ids
from autorule.training.cloud_loss import at_last_token, select_critique

log = logging.getLogger(__name__)

MODEL_TYPE = "autorule_cloud"
MODES = ("cloud", "classic")
ENGINES = ("auto", "hf", "vllm")
# The CLoud code's inference defaults (cloud/model.py: predict_reward).
CRITIQUE_MAX_NEW_TOKENS = 1024
CRITIQUE_REPETITION_PENALTY = 1.01


class CloudConfig(PretrainedConfig):
    """The wrapped LM's config, the mode, the head's dropout and the text format."""

    model_type = MODEL_TYPE
    sub_configs = {"lm_config": AutoConfig}

    def __init__(
        self,
        lm_config: PretrainedConfig | dict | None = None,
        mode: str = "cloud",
        head_dropout: float | None = None,
        format: dict | None = None,  # noqa: A002 - the name config.json carries
        max_sequence_length: int = 2048,
        **kwargs,
    ):
        if isinstance(lm_config, dict):
            lm_config = CONFIG_MAPPING[lm_config["model_type"]](**lm_config)
        if mode not in MODES:
            raise ValueError(f"CLoud mode must be one of {MODES}, got {mode!r}")
        self.lm_config = lm_config
        self.mode = mode
        self.head_dropout = head_dropout
        self.format = dict(format) if format is not None else None
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(**kwargs)


class RewardHead(nn.Module):
    """dropout -> linear(hidden, hidden) -> tanh -> dropout -> linear(hidden, 1)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(hidden)
        hidden = torch.tanh(self.dense(hidden))
        return self.out_proj(self.dropout(hidden)).squeeze(-1)


@dataclass
class CloudOutput(ModelOutput):
    """Rewards (batch,) and, when labels were given, the critique logits (N, vocab) at the
    positions that predict critique tokens, with those tokens (N,)."""

    rewards: torch.Tensor | None = None
    critique_logits: torch.Tensor | None = None
    critique_targets: torch.Tensor | None = None


class CloudRewardModel(PreTrainedModel):
    """A causal LM (``lm``) with a reward head (``reward_head``)."""

    config_class = CloudConfig
    base_model_prefix = "lm"
    supports_gradient_checkpointing = True
    # The loss is the trainer's (autorule.training.cloud_trainer), averaged per micro batch.
    accepts_loss_kwargs = False

    def __init__(self, config: CloudConfig, lm: PreTrainedModel | None = None):
        super().__init__(config)
        lm_config = config.lm_config
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(lm_config)
        dropout = config.head_dropout
        if dropout is None:  # the CLoud code: "use same dropout as attention dropout"
            dropout = float(getattr(lm_config, "attention_dropout", 0.0) or 0.0)
        self.reward_head = RewardHead(lm_config.hidden_size, float(dropout))
        self.post_init()

    @classmethod
    def from_lm(
        cls,
        lm: PreTrainedModel,
        mode: str,
        fmt: CloudFormat,
        max_length: int,
        head_dropout: float | None = None,
    ) -> CloudRewardModel:
        """A new reward head (initialised here, seeded by the caller) on a loaded ``lm``."""
        config = CloudConfig(
            # A copy: building a config resets its sub-configs' attention implementation, which
            # on the LM's own config object would switch the loaded LM's attention off sdpa.
            lm_config=copy.deepcopy(lm.config),
            mode=mode,
            head_dropout=head_dropout,
            format=fmt.to_dict(),
            max_sequence_length=max_length,
        )
        return cls(config, lm=lm).to(lm.dtype)

    def _init_weights(self, module: nn.Module) -> None:
        # Only the head is ours: the LM initialised (or loaded) its own weights.
        if isinstance(module, nn.Linear) and any(module is m for m in self.reward_head.modules()):
            std = float(getattr(self.config.lm_config, "initializer_range", 0.02))
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)

    @property
    def text_format(self) -> CloudFormat:
        if not self.config.format:
            raise ValueError("this CLoud model's config has no text format (config.format)")
        return CloudFormat.from_mapping(self.config.format)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lm_labels: torch.Tensor | None = None,
        **_: Any,
    ) -> CloudOutput:
        """Rewards at each row's last non-pad token; with ``lm_labels``, also the critique logits
        (computed at the critique positions only, not over the whole vocabulary x sequence)."""
        out = self.lm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        )
        hidden = out.last_hidden_state
        rewards = self.reward_head(at_last_token(hidden, attention_mask))
        if lm_labels is None:
            return CloudOutput(rewards=rewards)
        selected, targets = select_critique(hidden, lm_labels)
        logits = self.lm.get_output_embeddings()(selected)
        cap = getattr(self.config.lm_config, "final_logit_softcapping", None)
        if cap:  # models that soft-cap their logits (Gemma 2) do it in the LM's forward
            logits = torch.tanh(logits / cap) * cap
        return CloudOutput(rewards=rewards, critique_logits=logits, critique_targets=targets)


AutoConfig.register(MODEL_TYPE, CloudConfig, exist_ok=True)
AutoModel.register(CloudConfig, CloudRewardModel, exist_ok=True)


# --------------------------------------------------------------------------------------------
# Critique generation


@dataclass
class GenerationSettings:
    """How critiques are generated (greedy)."""

    max_new_tokens: int = CRITIQUE_MAX_NEW_TOKENS
    repetition_penalty: float = CRITIQUE_REPETITION_PENALTY
    batch_size: int = 8
    engine: str = "auto"  # auto: vLLM when installed and a GPU is there, else transformers
    gpu_memory_utilization: float = 0.9  # vLLM only

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"critique engine must be one of {ENGINES}, got {self.engine!r}")


def vllm_available() -> bool:
    """vLLM importable and a GPU to run it on."""
    from autorule.llm.vllm_offline import import_vllm

    try:
        import_vllm()
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_engine(engine: str) -> str:
    """``hf`` or ``vllm`` for a configured engine (``auto`` picks vLLM where it can run)."""
    if engine == "auto":
        return "vllm" if vllm_available() else "hf"
    return engine


def generation_prefixes(
    tokenizer, prompt_texts: Sequence[str], max_length: int, max_new_tokens: int
) -> list[list[int]]:
    """Token ids the critiques continue, cut from the left so the critique fits."""
    room = max(1, max_length - max_new_tokens - 1)
    prefixes = token_ids(tokenizer, prompt_texts, special=True)
    cut = sum(len(p) > room for p in prefixes)
    if cut:
        log.warning(
            "%d critique prompts are longer than %d tokens (max_length %d less %d new tokens "
            "and eos); their starts are cut",
            cut,
            room,
            max_length,
            max_new_tokens,
        )
    return [p[len(p) - room :] if len(p) > room else p for p in prefixes]


def generate_hf(
    lm: PreTrainedModel,
    tokenizer,
    prefixes: Sequence[Sequence[int]],
    settings: GenerationSettings,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy critiques with ``lm.generate``, left-padded batches of similar length."""
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    out: list[str] = [""] * len(prefixes)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    was_training = lm.training
    lm.eval()
    for start in range(0, len(order), settings.batch_size):
        batch = [list(prefixes[i]) for i in order[start : start + settings.batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=lm.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in batch], device=lm.device
        )
        with torch.no_grad():
            generated = lm.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=settings.max_new_tokens,
                repetition_penalty=settings.repetition_penalty,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad_id,
            )
        for row, i in enumerate(order[start : start + settings.batch_size]):
            out[i] = decode_critique(tokenizer, generated[row, width:].tolist())
        if progress is not None:
            progress(len(batch))
    lm.train(was_training)
    return out


def decode_critique(tokenizer, new_tokens: Sequence[int]) -> str:
    """The generated text up to the first eos, special tokens dropped, spaces trimmed."""
    tokens = list(new_tokens)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def generate_vllm(
    lm_folder: str | Path,
    tokenizer,
    prefixes: Sequence[Sequence[int]],
    settings: GenerationSettings,
) -> list[str]:
    """Greedy critiques with vLLM's offline engine on the LM saved in ``lm_folder``."""
    from autorule.llm.vllm_offline import import_vllm

    vllm = import_vllm()
    engine = vllm.LLM(
        model=str(lm_folder),
        tokenizer=str(lm_folder),
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )
    params = vllm.SamplingParams(
        temperature=0.0,
        max_tokens=settings.max_new_tokens,
        repetition_penalty=settings.repetition_penalty,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    outputs = engine.generate([{"prompt_token_ids": list(p)} for p in prefixes], params)
    texts = [decode_critique(tokenizer, o.outputs[0].token_ids) for o in outputs]
    # vLLM's engine runs in a process of its own, which ends with the last reference to it; the
    # GPU memory it held is then free for what follows (cloud's reward phase).
    del engine, outputs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return texts


def generate_critiques(
    lm: PreTrainedModel,
    tokenizer,
    prompt_texts: Sequence[str],
    max_length: int,
    settings: GenerationSettings,
    lm_folder: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """One greedy critique per prompt text, with transformers or vLLM (``settings.engine``).

    vLLM loads the LM from a folder: ``lm_folder`` when given, else ``lm`` saved to a
    temporary one first (a CLoud model's folder holds the head too, which vLLM cannot read).
    """
    prefixes = generation_prefixes(tokenizer, prompt_texts, max_length, settings.max_new_tokens)
    if resolve_engine(settings.engine) == "hf":
        return generate_hf(lm, tokenizer, prefixes, settings, progress)
    if lm_folder is not None:
        return generate_vllm(lm_folder, tokenizer, prefixes, settings)
    with tempfile.TemporaryDirectory(prefix="cloud-lm-") as folder:
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return generate_vllm(folder, tokenizer, prefixes, settings)


# --------------------------------------------------------------------------------------------
# Scoring


def score_sequences(
    model: CloudRewardModel, sequences: Sequence[Encoded], pad_id: int, batch_size: int
) -> list[float]:
    """Rewards of tokenized sequences, in order (batches of similar length)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    out: list[float] = [0.0] * len(sequences)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([sequences[i] for i in chunk], pad_id)
        with torch.no_grad():
            rewards = model(
                input_ids=batch["input_ids"].to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
            ).rewards
        for i, reward in zip(chunk, rewards.float().tolist(), strict=True):
            out[i] = reward
    model.train(was_training)
    return out


def predict_reward(
    model: CloudRewardModel,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    settings: GenerationSettings | None = None,
    critiques: Sequence[str] | None = None,
    lm_folder: str | Path | None = None,
) -> tuple[list[float], list[str]]:
    """(rewards, critiques) of each (prompt, response): critique first, then the score.

    ``critiques`` given: they are scored as they are (no generation), e.g. to score oracle
    critiques. A classic model returns empty critiques. ``lm_folder``: the LM alone, saved, for
    vLLM (see :func:`generate_critiques`).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return [], []
    settings = settings or GenerationSettings()
    fmt, max_length = model.text_format, int(model.config.max_sequence_length)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    eos = tokenizer.eos_token_id
    if model.config.mode == "classic":
        texts = [fmt.answer_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        sequences = [join(ids, None, eos, max_length) for ids in token_ids(tokenizer, texts, True)]
        return score_sequences(model, sequences, pad_id, settings.batch_size), [""] * len(prompts)
    texts = [fmt.critique_prompt(p, r) for p, r in zip(prompts, responses, strict=True)]
    if critiques is None:
        critiques = generate_critiques(model.lm, tokenizer, texts, max_length, settings, lm_folder)
    elif len(critiques) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(critiques)} critiques")
    prefixes = token_ids(tokenizer, texts, special=True)
    critique_ids = token_ids(tokenizer, list(critiques), special=False)
    sequences = [join(p, c, eos, max_length) for p, c in zip(prefixes, critique_ids, strict=True)]
    return score_sequences(model, sequences, pad_id, settings.batch_size), list(critiques)


def load(folder: str | Path, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) of a saved CLoud model, in eval mode on ``device`` (None: cuda when
    available, else cpu)."""
    from transformers import AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = CloudRewardModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer
