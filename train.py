"""charlit training entry point: ``python train.py method=self_distill``, or a multi-stage
``python train.py recipe=pairs_introspection`` (see README)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlit.cli import bad_input_exits
from charlit.config import cli_argv, register_configs


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from charlit.recipes import is_recipe, run_recipe
    from charlit.run import train

    with bad_input_exits():
        (run_recipe if is_recipe(cfg) else train)(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    with bad_input_exits():
        sys.argv = [sys.argv[0], *cli_argv(sys.argv[1:])]
    register_configs()
    main()
