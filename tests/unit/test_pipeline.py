"""The pipeline resolves the artifact graph: an input a stage declares under a config of its own
is made first when missing, with what it needs in turn; inputs under the run's own config are
left to the user; a dry run prints what would be made and writes nothing."""

from autorule.core.artifacts import artifact_path
from autorule.core.config import compose
from autorule.pipeline import missing_inputs, run_stage
from autorule.stages import feedback, feedback_eval

STUDY = ["experiment=feedback_study"]


def test_a_derived_input_is_made_with_what_it_needs(tmp_path):
    overrides = ["feedback.source=generate", "generate.model=sft"]
    cfg = compose(["stage=feedback", f"paths.root={tmp_path}", *overrides])
    plan = missing_inputs(cfg, "feedback")
    samples = feedback.candidates_config(cfg)
    # the samples' generate artifact, after what it needs itself under that config
    assert [stage for stage, _ in plan] == ["preprocess", "sft", "generate"]
    assert artifact_path(plan[-1][1], "generate") == artifact_path(samples, "generate")
    # the feedback stage's own inputs under the run's config are not made for it
    plain = compose(["stage=feedback", f"paths.root={tmp_path}"])
    assert missing_inputs(plain, "feedback") == []


def test_feedback_eval_plans_each_protocols_model_and_picks_once(tmp_path):
    cfg = compose(["stage=feedback_eval", *STUDY, f"paths.root={tmp_path}"])
    plan = [(stage, artifact_path(c, stage)) for stage, c in missing_inputs(cfg, "feedback_eval")]
    folders = [folder for _, folder in plan]
    assert len(folders) == len(set(folders))  # what both protocols need, once
    assert [stage for stage, _ in plan].count("feedback") == 1
    for protocol in ("ratings", "rankings"):
        pcfg = feedback_eval.with_protocol(cfg, protocol)
        rm, picks = artifact_path(pcfg, "feedback_rm"), artifact_path(pcfg, "generate")
        assert folders.index(rm) < folders.index(picks)


def test_a_dry_run_prints_what_would_be_made_and_writes_nothing(tmp_path, capsys):
    cfg = compose(["stage=feedback_eval", *STUDY, f"paths.root={tmp_path}", "dry_run=true"])
    run_stage(cfg)
    shown = capsys.readouterr().out
    for protocol in ("ratings", "rankings"):
        pcfg = feedback_eval.with_protocol(cfg, protocol)
        assert "stage generate not run (it has no dry run)" in shown
        assert str(artifact_path(pcfg, "generate")) in shown
        assert f"feedback_rm.protocol={protocol}" in shown
    assert "dry run of stage feedback_rm" in shown
    assert not any(tmp_path.rglob("manifest.json"))
