"""Rule sets: de-duplication and loading from files or the extract artifact."""

import json
import logging

import pytest

from autorule.core.artifacts import StageInputError, StageJob, artifact_path
from autorule.core.config import REPO_ROOT, compose
from autorule.rules.ruleset import dedupe_rules, normalize_rule, read_rules_file

EXAMPLE = REPO_ROOT / "data" / "rules" / "example_rules.json"


def test_exact_duplicates_fold_case_and_spacing():
    rules = ["Be concise.", "  be   CONCISE ", "Cite sources", "", "cite sources."]
    assert dedupe_rules(rules) == ["Be concise.", "Cite sources"]
    assert normalize_rule(" A  b. ") == "a b"


def test_rule_files_in_json_and_yaml(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(["Be concise.", "be concise"]))
    (tmp_path / "r.yaml").write_text("description: mine\nrules:\n  - Be concise.\n  - Cite.\n")
    assert read_rules_file(tmp_path / "r.json") == ["Be concise."]
    assert read_rules_file(str(tmp_path / "r.yaml")) == ["Be concise.", "Cite."]
    (tmp_path / "bad.json").write_text('{"rules": [1, 2]}')
    with pytest.raises(ValueError, match="list of strings"):
        read_rules_file(tmp_path / "bad.json")
    (tmp_path / "empty.yaml").write_text("rules: []\n")
    with pytest.raises(ValueError, match="holds no rules"):
        read_rules_file(tmp_path / "empty.yaml")


def test_the_example_rule_file_is_labelled_and_small():
    data = json.loads(EXAMPLE.read_text())
    assert "hand-written" in data["description"].lower()
    assert len(read_rules_file(EXAMPLE)) == 8


def test_load_rules_from_config(tmp_path, rules_of):
    cfg = compose([f"paths.root={tmp_path}", f"rules.path={EXAMPLE}"])
    assert rules_of(cfg) == read_rules_file(EXAMPLE)
    with pytest.raises(StageInputError, match="stage=extract"):
        rules_of(compose([f"paths.root={tmp_path}"]))
    with pytest.raises(StageInputError, match="rules.path=.*not a file"):
        rules_of(compose([f"paths.root={tmp_path}", f"rules.path={tmp_path}/none.json"]))


def fake_extract_artifact(cfg, rules: list[str], extra: dict, fallback_used: int) -> None:
    """A complete extract artifact as extract.run commits it (manifest fields load_rules reads)."""
    folder = artifact_path(cfg, "extract")
    folder.mkdir(parents=True)
    (folder / "rules.json").write_text(json.dumps(rules))
    manifest = {
        "stage": "extract",
        "status": "complete",
        "config_hash": "x",
        "artifact_hash": "content-of-" + json.dumps(rules),
        "files": {},
        "inputs": {},
        "counts": {"fallback_rules_used": fallback_used},
        "extract": extra,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_fallback_rules_from_the_extract_artifact_are_announced(tmp_path, caplog, rules_of):
    fallback = compose([f"paths.root={tmp_path / 'a'}"])
    fake_extract_artifact(
        fallback,
        read_rules_file(EXAMPLE),
        {"rules_origin": "fallback", "fallback_file": str(EXAMPLE), "reason": "no rules (8 pairs)"},
        fallback_used=1,
    )
    with caplog.at_level(logging.WARNING, logger="autorule.rules.ruleset"):
        assert rules_of(fallback) == read_rules_file(EXAMPLE)
    [record] = caplog.records
    assert "FALLBACK rule file" in record.message and "hand-written" in record.message
    assert str(EXAMPLE) in record.message and "no rules (8 pairs)" in record.message

    caplog.clear()
    extracted = compose([f"paths.root={tmp_path / 'b'}"])
    fake_extract_artifact(extracted, ["Be concise."], {"rules_origin": "extracted"}, 0)
    with caplog.at_level(logging.WARNING, logger="autorule.rules.ruleset"):
        assert rules_of(extracted) == ["Be concise."]
    assert not caplog.records


def test_a_rule_file_is_an_input_hashed_by_content(tmp_path, rules_of):
    rules = tmp_path / "mine.json"
    rules.write_text(json.dumps(["Be concise."]))
    cfg = compose([f"paths.root={tmp_path / 'out'}", f"rules.path={rules}"])
    assert rules_of(cfg) == ["Be concise."]
    with StageJob(cfg, "reader") as job:
        folder = job.commit()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rules"]["from"] == "file" and manifest["rules"]["path"] == str(rules)
    assert len(manifest["rules"]["sha256"]) == 64
    assert "extract" not in manifest["inputs"]  # the file replaces the extract artifact

    rules.write_text(json.dumps(["Be concise.", "Cite sources."]))  # same path, new content
    assert artifact_path(cfg, "reader") != folder
    assert (
        artifact_path(
            compose([f"paths.root={tmp_path / 'out'}", "seed=1", f"rules.path={rules}"]), "reader"
        )
        != folder
    )


def test_rules_from_the_extract_artifact_are_a_recorded_input(tmp_path, rules_of):
    cfg = compose([f"paths.root={tmp_path}"])
    fake_extract_artifact(cfg, ["Be concise."], {"rules_origin": "extracted"}, 0)
    assert rules_of(cfg) == ["Be concise."]
    with StageJob(cfg, "reader") as job:
        folder = job.commit()
    manifest = json.loads((folder / "manifest.json").read_text())
    extract = str(artifact_path(cfg, "extract"))
    assert manifest["rules"] == {
        "from": "extract",
        "path": extract,
        "hash": 'content-of-["Be concise."]',
    }
    assert manifest["inputs"]["extract"]["path"] == extract


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        # a tag that would build a Python object: refused by the safe loader, with the file named
        (
            "rules.yaml",
            b'!!python/object/apply:os.system ["echo owned"]\n',
            "is not plain YAML (line 1, column 1): could not determine a constructor",
        ),
        ("rules.yaml", b"rules: [unclosed\n", "is not plain YAML (line 2, column 1)"),
        ("rules.json", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not UTF-8 text (byte 0"),
        ("rules.yaml", b"- ok\n- caf\xe9\n", "is not UTF-8 text (byte 10"),
    ],
)
def test_a_rule_file_that_cannot_be_read_is_named(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_rules_file(path)
    assert str(err.value).startswith(f"rule file {path} ")
    assert problem in str(err.value)


def test_the_manifest_records_the_rule_file_as_it_was_read(tmp_path, rules_of):
    from autorule.core.hashing import file_sha256

    rules = tmp_path / "mine.json"
    rules.write_text(json.dumps(["Be concise."]))
    read = file_sha256(rules)
    cfg = compose([f"paths.root={tmp_path / 'out'}", f"rules.path={rules}"])
    with StageJob(cfg, "reader") as job:
        rules.write_text(json.dumps(["Edited while the stage runs."]))  # mid-run
        folder = job.commit()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rules"]["sha256"] == read != file_sha256(rules)


def test_a_rule_that_is_not_encodable_text_is_refused_naming_the_file(tmp_path):
    rules = tmp_path / "surrogate.json"
    rules.write_text('["Be concise.", "Lone \\ud800 surrogate."]')  # valid JSON escapes
    with pytest.raises(ValueError) as raised:
        read_rules_file(rules)
    assert str(raised.value).startswith(f"rule file {rules}: rule 1 holds '\\ud800'")
