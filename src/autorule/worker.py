"""Entry point of one training process started by ``accelerate launch``
(:mod:`autorule.training.launch`).

    python -m autorule.worker <work folder>/launch/config-machine0.yaml

Loads the config the launching process saved (already composed and resolved: Hydra does not run
again), and runs the stage's ``train`` function with the work folder and input folders recorded
in it. Writing the manifest and committing the artifact is left to the launching process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from autorule.core.stage import load


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="config saved by the launching process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    cfg = OmegaConf.load(args.config)
    worker = cfg.worker
    inputs = {name: Path(p) for name, p in worker.inputs.items()}
    load(worker.stage, cfg).train(cfg, Path(worker.workdir), inputs, ())


if __name__ == "__main__":
    main()
