"""Config composition shared by the command line and the tests.

``python -m autorule`` composes the config once with Hydra; tests compose the same config with
:func:`compose` and call stage functions directly. Either way :func:`finalize` attaches the
selected stage name (``cfg.stage``) and the command-line overrides (``cfg.run.overrides``, secrets
masked) so stages never need Hydra's globals.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from autorule.core.secrets import redact_override

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
REPO_ROOT = Path(__file__).resolve().parents[3]


class ConfigError(ValueError):
    """A config value that cannot work, found before any work or paid call starts.

    The message names the key, the value and the allowed range; the command line prints it as
    one line, without a traceback."""


def check_root(root: Any) -> Any:
    """``paths.root`` itself, refused when empty: every artifact, log folder and cache would
    otherwise land in the filesystem's root (``/logs``, ``/.cache``) or the working directory."""
    if root is None or not str(root).strip():
        raise ConfigError(
            f"paths.root={root!r} is empty: it must name the folder that holds the artifacts, "
            "e.g. paths.root=outputs (set it, or the AUTORULE_ROOT environment variable)"
        )
    return root


def check_paths(cfg: DictConfig) -> None:
    """The checks every stage shares: a non-empty ``paths.root``."""
    check_root(OmegaConf.select(cfg, "paths.root"))


def check_number(
    value: Any,
    key: str,
    *,
    integer: bool = True,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    none_ok: bool = False,
    meaning: str = "",
) -> None:
    """Raises :class:`ConfigError` naming ``key`` and the allowed range unless ``value`` is a
    finite number (an integer when ``integer``) in that range; ``meaning`` adds what the key is
    for."""
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        allowed = f"{kind} in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        allowed = f"{kind} {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"{kind} {'<' if high_open else '<='} {high:g}"
    else:
        allowed = kind
    allowed += " or null" if none_ok else ""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    # NaN compares false with every bound and would pass an unbounded check; inf is no setting.
    is_number = is_number and math.isfinite(value)
    ok = is_number and (isinstance(value, numbers.Integral) or not integer)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}{meaning}")


def check_choice(value: Any, key: str, choices: Sequence[Any]) -> None:
    """Raises :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be one of {list(choices)}")


def _register_resolvers() -> None:
    # ${repo:data} -> absolute path inside the autorule checkout (bundled data, confs).
    if not OmegaConf.has_resolver("repo"):
        OmegaConf.register_new_resolver("repo", lambda sub="": str(REPO_ROOT / sub))
    # ${root:${paths.root}} -> paths.root, refused when empty. Hydra's run folder and the cache
    # go through it because Hydra creates its folder before any autorule code runs.
    if not OmegaConf.has_resolver("root"):
        OmegaConf.register_new_resolver("root", check_root)


_register_resolvers()


def override_top_key(override: str) -> str:
    """The top-level config key an override sets: ``+llm.model=x`` -> ``llm``,
    ``llm@extract.llm=openai`` -> ``llm``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0].split(".", 1)[0]


def overrides_without(overrides: Iterable[str], top_keys: Iterable[str]) -> list[str]:
    """``overrides`` less those whose top-level key is in ``top_keys``."""
    drop = set(top_keys)
    return [o for o in overrides if override_top_key(o) not in drop]


# Spellings of earlier versions that Hydra would reject with a message naming nothing useful:
# the old override prefix -> what to write now.
RENAMED_OVERRIDES = {
    "llm": "each stage has its own LLM role now: llm@extract.llm=<backend> picks the extract "
    "stage's backend and extract.llm.<key>=... sets its keys (e.g. extract.llm.base_url=...)",
    "extract.source": "extract.source is now extract.rules_from (reasoning|explanation)",
    # conf/prompts/ holds the extract stage's sets; the judge's are a group of their own.
    "prompts@judge.prompts": "the rule judge's prompt sets are the group prompts/judge: "
    "prompts/judge@judge.prompts=detailed|paper",
}


def renamed_overrides(overrides: Iterable[str]) -> list[str]:
    """One message per override spelled the old way (see :data:`RENAMED_OVERRIDES`)."""
    found = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        for old, hint in RENAMED_OVERRIDES.items():
            if key == old or key.startswith(old + "."):
                found.append(f"{override.split('=', 1)[0]}: {hint}")
    return found


def with_dataset(cfg: DictConfig, name: str, key: str = "rules.dataset") -> DictConfig:
    """A copy of ``cfg`` with the dataset group's option ``name`` (``conf/dataset/<name>.yaml``),
    as ``dataset=<name>`` on the command line would give. Where the data is read from follows
    the profile: a ``dataset.path`` that points inside the dataset section (the tiny profile's
    bundled copy, the paper's hub id) is kept; any other is the new option's own. ``key`` names
    the setting that asked for the dataset, in the error for an unknown one."""
    file = CONF_DIR / "dataset" / f"{name}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
        raise ValueError(f"{key}={name!r}: no {file}; known datasets: {known}")
    other = copy.deepcopy(cfg)
    section = OmegaConf.load(file)
    path = cfg.dataset._get_node("path")._value()
    with open_dict(other):
        if isinstance(path, str) and path.startswith("${dataset."):
            section.path = path
        other.dataset = section
        overrides = [o for o in other.run.overrides if override_top_key(o) != "dataset"]
        other.run.overrides = [*overrides, f"dataset={name}"]
    return other


def with_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with each dotted key of ``values`` set, as ``key=value`` on the command
    line would give; ``run.overrides`` says so too, so the command recorded for an artifact made
    under the copy makes it again."""
    other = copy.deepcopy(cfg)
    with open_dict(other):
        for key, value in values.items():
            OmegaConf.update(other, key, value, merge=False)
        if OmegaConf.select(other, "run.overrides") is not None:
            kept = [
                o for o in other.run.overrides if str(o).lstrip("+~").split("=", 1)[0] not in values
            ]
            other.run.overrides = [*kept, *(f"{k}={override_value(v)}" for k, v in values.items())]
    return other


def override_value(value: Any) -> str:
    """``value`` spelled as on the command line (None -> null, True -> true)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def finalize(cfg: DictConfig, stage: str, overrides: Sequence[str]) -> DictConfig:
    """Attaches the stage to run and the (redacted) overrides that produced this config."""
    with open_dict(cfg):
        cfg.stage = stage
        cfg.run = {"overrides": [redact_override(o) for o in overrides]}
    return cfg


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Composes the autorule config as ``python -m autorule <overrides>`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    stage = cfg.hydra.runtime.choices.stage
    with open_dict(cfg):
        del cfg["hydra"]
    return finalize(cfg, stage, overrides)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m autorule.core.config <key> [overrides...]`` prints one value of the composed
    config (scripts use it, e.g. to serve the judge model the config names)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m autorule.core.config <dotted.key> [overrides...]")
    value = OmegaConf.select(compose(args[1:]), args[0], throw_on_missing=True)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        value = OmegaConf.to_yaml(value, resolve=True).strip()
    print(value)


if __name__ == "__main__":
    main()
