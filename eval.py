"""charlit evaluation entry point: ``python eval.py ckpt=<run dir> persona=<p>`` (see README, Evaluation)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlit.cli import bad_input_exits
from charlit.config import cli_argv, register_configs


@hydra.main(config_path="conf", config_name="eval_main", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from charlit.eval.cli import run_eval

    with bad_input_exits():
        run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    with bad_input_exits():  # before the imports below: a refused secret costs no time
        sys.argv = [sys.argv[0], *cli_argv(sys.argv[1:])]
    from charlit.eval.cli import register_eval_configs

    register_configs()
    register_eval_configs()
    main()
