"""charlit evaluation entry point: ``python eval.py ckpt=<run dir> persona=<p>`` (see README, Evaluation)."""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlit.config import register_configs, rewrite_persona_path


@hydra.main(config_path="conf", config_name="eval_main", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from charlit.eval.cli import run_eval

    try:
        run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        if os.environ.get("CHARLIT_FULL_ERROR"):
            raise
        print(f"charlit: error: {err}\n(set CHARLIT_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from charlit.eval.cli import register_eval_configs

    register_configs()
    register_eval_configs()
    sys.argv = [sys.argv[0], *rewrite_persona_path(sys.argv[1:])]
    main()
