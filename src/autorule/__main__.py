"""Command line: ``python -m autorule stage=<name> [hydra overrides]``.

Composes the config once and hands it to :func:`autorule.pipeline.run_stage`. Everything Hydra
offers works: ``--cfg job``, ``--help``, ``-m`` sweeps.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autorule.config import CONF_DIR, finalize


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from autorule.pipeline import run_stage
    from autorule.secrets import install_log_redaction

    install_log_redaction()
    hc = HydraConfig.get()
    finalize(cfg, hc.runtime.choices["stage"], hc.overrides.task)
    run_stage(cfg)


if __name__ == "__main__":
    main()
