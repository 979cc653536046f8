import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
# Without CUDA, Triton kernels only run in the interpreter, and @triton.jit decides interpreted vs
# compiled when charlit.kernels.triton is first imported: set it before any test module imports charlit.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def scratch_calibration_cache(tmp_path_factory):
    """Calibrations that tests trigger (tiny models, tiny shapes; in train.py subprocesses too) go to a scratch
    file, not the user's ``~/.cache/charlit/calibration.json``."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("calibration") / "calibration.json"
        patch.setenv("CHARLIT_CALIBRATION", str(path))
        yield path


def compose(overrides=()):
    """Compose conf/train.yaml the way train.py does, decoding in fp32 unless the overrides say otherwise: with
    ``sampler.precision=auto`` a test's samples would depend on the CPU it runs on (tests/sampling checks bf16)."""
    overrides = list(overrides)
    if not any(o.startswith(("sampler=", "sampler.precision=")) for o in overrides):
        overrides.insert(0, "sampler.precision=fp32")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from charlit.config import cli_argv, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=cli_argv(list(overrides)))


@pytest.fixture(scope="session")
def tokenizer():
    from charlit.models import load_tokenizer

    return load_tokenizer(OmegaConf.create({"name_or_path": "tiny"}))


@pytest.fixture(scope="session")
def pirate():
    from charlit.data.constitution import resolve_persona

    return resolve_persona("pirate")
