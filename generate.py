"""charlit data generation: ``python generate.py data=pairs persona=stoic`` runs (or reuses) the data pipeline
for a data variant and prints the dataset's path (see README, "Data pipeline")."""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlit.config import register_configs, rewrite_persona_path


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from charlit.data.pipeline.cli import generate

    try:
        generate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, FileNotFoundError, ImportError) as err:  # bad input: one clear line, no traceback
        if os.environ.get("CHARLIT_FULL_ERROR"):
            raise
        print(f"charlit: error: {err}\n(set CHARLIT_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    register_configs()
    sys.argv = [sys.argv[0], *rewrite_persona_path(sys.argv[1:])]
    main()
