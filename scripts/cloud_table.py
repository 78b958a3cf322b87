"""Prints CLoud and the classic baseline side by side: RewardBench sections, their average and
the held-out accuracy, from the cloud_eval artifacts of experiment=cloud_uf and classic_uf.

    python scripts/cloud_table.py profile=tiny paths.root=outputs     # after both pipelines ran

Every argument is a Hydra override applied to both experiments (the same ones the pipelines ran
with), so each finds its own artifact; a missing one is named with the command that makes it.
"""

import json
import sys

from autorule.core.artifacts import artifact_path, is_complete, make_command, read_manifest
from autorule.core.config import compose
from autorule.evaluation.rewardbench import side_by_side
from autorule.training.arguments import METRICS

EXPERIMENTS = {"CLoud": "cloud_uf", "classic": "classic_uf"}


def main(overrides: list[str]) -> str:
    results, heldout = {}, {}
    for name, experiment in EXPERIMENTS.items():
        cfg = compose(["stage=pipeline", f"experiment={experiment}", *overrides])
        folder = artifact_path(cfg, "cloud_eval")
        if not is_complete(read_manifest(folder)):
            raise SystemExit(
                f"no cloud_eval artifact for experiment={experiment} at {folder}; make it with\n"
                f"  python -m autorule stage=pipeline experiment={experiment} {' '.join(overrides)}"
                f"\n(its last stage: {make_command(cfg, 'cloud_eval')})"
            )
        metrics = json.loads((folder / METRICS).read_text())
        if "rewardbench" not in metrics:
            raise SystemExit(f"{folder} has no RewardBench scores (cloud_eval.rewardbench.path)")
        results[name] = metrics["rewardbench"]
        heldout[name] = metrics["heldout"]["accuracy"]
    table = side_by_side(results)
    row = " | ".join(f"{100 * heldout[n]:.1f}" for n in results)
    pairs = {n: r["pairs"] for n, r in results.items()}
    return f"{table}\n| held-out pairs | {row} |\n\nRewardBench pairs scored: {pairs}"


if __name__ == "__main__":
    print(main(sys.argv[1:]))
