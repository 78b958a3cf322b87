"""The AlpacaEval and MT-Bench hand-offs, checked with the tools' own loaders when they are
installed (``autorule[alpaca]``, ``autorule[fschat]``)."""

import json

import pytest

from autorule.evaluation import alpaca, mt_bench
from autorule.evaluation.generation import later_turn_prompt

TEMPLATE = "<|user|>{prompt}<|assistant|>"
ROWS = [
    {"id": "1", "dataset": "helpful_base", "turns": ["Name a colour."], "responses": ["Blue."]},
    {"id": "2", "dataset": "oasst", "turns": ["Add 2 and 2."], "responses": ["4"]},
]
SAMPLING = {"temperature": 0.9, "top_p": 1.0, "max_new_tokens": 4096, "dtype": "bf16"}


@pytest.fixture
def written(tmp_path):
    return alpaca.write(
        tmp_path / "alpaca_eval", ROWS, "autorule-grpo", "/m/grpo", SAMPLING, TEMPLATE
    )


def test_alpaca_eval_files_follow_its_documented_format(written):
    records = json.loads(open(written["outputs"]).read())
    # AlpacaEval's model outputs: a JSON list of instruction / output / generator records.
    assert records[0] == {
        "instruction": "Name a colour.",
        "output": "Blue.",
        "generator": "autorule-grpo",
        "dataset": "helpful_base",
    }
    import yaml

    config = yaml.safe_load(open(written["model_configs"]))["autorule-grpo"]
    assert config["prompt_template"] == "autorule-grpo/prompt.txt"
    assert config["completions_kwargs"]["temperature"] == 0.9
    assert config["completions_kwargs"]["model_kwargs"] == {"torch_dtype": "bfloat16"}


@pytest.fixture
def pkg_resources_shim(monkeypatch):
    """alpaca_eval 0.6 imports pkg_resources, which setuptools 81 and later no longer ship (the
    ``alpaca`` extra pins setuptools below 81); where it is missing, stand in for the two version
    helpers alpaca_eval takes from it."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import sys
        import types
        from importlib import metadata

        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        shim.get_distribution = lambda name: types.SimpleNamespace(version=metadata.version(name))
        monkeypatch.setitem(sys.modules, "pkg_resources", shim)


def test_alpaca_eval_loaders_accept_the_files(written, pkg_resources_shim):
    with alpaca.root_log_level_kept():  # alpaca_eval's import would leave the root at INFO
        utils = pytest.importorskip("alpaca_eval.utils")
        decoders = pytest.importorskip("alpaca_eval.decoders")
    from pathlib import Path

    outputs = utils.load_or_convert_to_dataframe(written["outputs"])
    assert {"instruction", "output", "generator"} <= set(outputs.columns)
    assert utils.get_generator_name(None, outputs) == "autorule-grpo"
    # evaluate_from_model: configs relative to base_dir, its template filled by make_prompts.
    base_dir = Path(written["model_configs"]).parents[1]
    configs = utils.load_configs("autorule-grpo", relative_to=base_dir)
    config = configs["autorule-grpo"]
    template = utils.read_or_return(config["prompt_template"], relative_to=base_dir)
    prompts, _ = utils.make_prompts(outputs, template=template)
    assert prompts == [later_turn_prompt(TEMPLATE, r["turns"], []) for r in ROWS]
    # A decoder AlpacaEval dispatches by that name (loading it needs its decoding extras).
    import inspect

    assert f'"{config["fn_completions"]}"' in inspect.getsource(decoders.get_fn_completions)


def test_fastchat_answers_follow_its_format(tmp_path):
    rows = [{"id": "81", "question_id": 81, "turns": ["q1", "q2"], "responses": ["a1", "a2"]}]
    path = mt_bench.write_answers(tmp_path, rows, "autorule-grpo", 123.0)
    assert path == tmp_path / "model_answer" / "autorule-grpo.jsonl"
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["question_id"] == 81 and record["model_id"] == "autorule-grpo"
    assert record["choices"] == [{"index": 0, "turns": ["a1", "a2"]}]
    common = pytest.importorskip("fastchat.llm_judge.common")
    loaded = common.load_model_answers(str(tmp_path / "model_answer"))
    assert loaded["autorule-grpo"][81]["choices"][0]["turns"] == ["a1", "a2"]


def test_fastchat_adapter_registers_and_formats_a_conversation(tmp_path):
    pytest.importorskip("fastchat")
    from fastchat.model.model_adapter import get_conversation_template, get_model_adapter

    mt_bench.register()
    mt_bench.register()  # idempotent
    conv = get_conversation_template("autorule-grpo")
    assert conv.name == mt_bench.TEMPLATE_NAME
    conv.append_message(conv.roles[0], "q1")
    conv.append_message(conv.roles[1], "a1")
    conv.append_message(conv.roles[0], "q2")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    assert prompt == "<|user|>q1<|assistant|>a1<|user|>q2<|assistant|>"
    # ... exactly what the generate stage feeds the model for the second turn
    assert prompt == later_turn_prompt(TEMPLATE, ["q1", "q2"], ["a1"])
    # An autorule artifact's model folder picks the adapter by its full path, before FastChat's
    # catch-all adapter; other models keep theirs.
    artifact = tmp_path / "sft" / "uf-0123"
    (artifact / "model").mkdir(parents=True)
    (artifact / "manifest.json").write_text(json.dumps({"stage": "sft"}))
    assert type(get_model_adapter(str(artifact / "model"))).__name__ == "AutoRuleAdapter"
    assert type(get_model_adapter("lmsys/vicuna-7b-v1.5")).__name__ != "AutoRuleAdapter"
