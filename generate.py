"""charlit data generation: ``python generate.py data=pairs persona=stoic`` runs (or reuses) the data pipeline
for a data variant and prints the dataset's path (see README, "Data pipeline")."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlit.cli import bad_input_exits
from charlit.config import cli_argv, register_configs


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from charlit.data.pipeline.cli import generate

    with bad_input_exits():
        generate(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    with bad_input_exits():
        sys.argv = [sys.argv[0], *cli_argv(sys.argv[1:])]
    register_configs()
    main()
