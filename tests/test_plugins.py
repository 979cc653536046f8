"""A throwaway third-party package plugs into every extension point without editing any charlit file.

It lives in a temporary directory: one module, YAMLs under its own ``conf/`` (added with Hydra's
``hydra.searchpath=[pkg://toy_charlit_plugin.conf]``) and a ``.dist-info`` whose ``entry_points.txt`` registers
an objective, a teacher, a sampler, a data kind, a data pipeline stage, a kernel backend, an eval suite and a
judge, exactly as ``pip install`` of a real package would. Training and evaluation then use them by name.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

PLUGIN = '''
"""Toy plugins: each does something small and checkable."""
from dataclasses import dataclass

from charlit.data.modules.prompts import PromptData
from charlit.data.pipeline.reflection import ReflectionStage
from charlit.data.modules.base import DataSettings, IGNORED_KEYS
from charlit.data.prompts import heldout_prompts
from charlit.eval.judges.base import PersonaJudge
from charlit.eval.stats import mean_ci
from charlit.eval.suites.base import SuiteResult
from charlit.kernels.backends.torch import TorchBackend
from charlit.objectives.self_distill import SelfDistill
from charlit.objectives.teacher_objective import DivergenceSettings
from charlit.sampling.base import SamplerSettings
from charlit.sampling.hf import HFSampler
from charlit.settings import parse, setting
from charlit.teachers.self import SelfTeacher

CALLS = {"teacher": 0, "sampler": 0, "kernel": 0}


def _mark(what):
    CALLS[what] += 1
    with open(__import__("os").environ["TOY_PLUGIN_LOG"], "a") as log:
        log.write(what + "\\n")


class Toy(SelfDistill):
    data_kinds = ("prompts", "toy_prompts")

    @dataclass
    class Config(DivergenceSettings):
        scale: float = setting(1.0, gt=0)

    def compute_loss(self, batch):
        loss, metrics, n_tokens = super().compute_loss(batch)
        return self.config.scale * loss, {**metrics, "toy_scale": self.config.scale}, n_tokens


class ToyTeacher(SelfTeacher):
    def score(self, prompts, responses):
        _mark("teacher")
        return super().score(prompts, responses)


class ToySampler(HFSampler):
    @dataclass
    class Config(SamplerSettings):
        max_new_tokens: int = setting(5, ge=1)

    def generate(self, model, prompts, params, **kwargs):
        _mark("sampler")
        return super().generate(model, prompts, params, **kwargs)


@dataclass
class ToyPromptSettings(DataSettings):
    prompts: list = setting(["Say hello."])


class ToyPrompts(PromptData):
    @classmethod
    def from_config(cls, data_cfg, *, constitution, tokenizer, conversation_format, seed, dataset_path=None):
        settings = parse(ToyPromptSettings, data_cfg, "data", ignore=IGNORED_KEYS)
        return cls(list(settings.prompts), heldout_prompts(settings.heldout_set, settings.val_size, settings.prompts),
                   settings, seed)


class ToyBackend(TorchBackend):
    def divergence(self, *args):
        _mark("kernel")
        return super().divergence(*args)


class ArrJudge(PersonaJudge):
    def __init__(self, **_):
        pass

    def score(self, replies, constitution):
        return [float(r.text.lower().count("arr")) for r in replies]


class MottoStage(ReflectionStage):
    """Reflection rows, one prompt type only, under a stage name of its own."""

    name = "motto"


def build_motto(cfg, ctx, generator, teacher):
    return MottoStage(ctx, generator, int(cfg.data.generate.motto.per_type), ["introduce_yourself"])


def reply_length(ctx):
    result = SuiteResult()
    for system in ctx.systems:
        replies = ctx.replies(system, ["Tell me about ships."], 0, "toy")
        result.put("reply_tokens", system.label, mean_ci([len(r.ids) for r in replies]))
        result.put("arr", system.label, mean_ci(ctx.judges["arr"].score(replies, ctx.constitution)))
    return result
'''

ENTRY_POINTS = """
[charlit.objectives]
toy = toy_charlit_plugin:Toy
[charlit.teachers]
toy_teacher = toy_charlit_plugin:ToyTeacher
[charlit.samplers]
toy_sampler = toy_charlit_plugin:ToySampler
[charlit.data_kinds]
toy_prompts = toy_charlit_plugin:ToyPrompts
[charlit.kernel_backends]
toy_backend = toy_charlit_plugin:ToyBackend
[charlit.suites]
reply_length = toy_charlit_plugin:reply_length
[charlit.judges]
arr = toy_charlit_plugin:ArrJudge
[charlit.data_stages]
motto = toy_charlit_plugin:build_motto
"""

YAMLS = {
    "method/toy.yaml": """
        # @package _global_
        defaults:
          - override /data: toy_prompts
        method:
          name: toy
          beta: 1.0
          temperature: 1.0
          scale_by_t2: false
          teacher_weights: frozen
          ema_decay: 0.99
          scale: 0.5
        """,
    "teacher/toy_teacher.yaml": "name: toy_teacher\n",
    "sampler/toy_sampler.yaml": """
        name: toy_sampler
        batch_size: 4
        max_new_tokens: 5
        temperature: 1.0
        top_p: 1.0
        top_k: 0
        """,
    "data/toy_prompts.yaml": """
        name: toy_prompts
        kind: toy_prompts
        prompts: ["Where is the treasure?", "How do I tie a knot?", "What is rain?"]
        heldout_set: general_heldout
        val_size: 2
        batch_size: 2
        val_batch_size: 2
        """,
    "data/mottos.yaml": """
        name: mottos
        kind: conversations
        path: null
        generate:
          stages: [motto]
          motto:
            per_type: 3
        heldout_set: general_heldout
        val_size: 2
        batch_size: 2
        val_batch_size: 2
        max_length: 256
        """,
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    package = root / "toy_charlit_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (package / "conf").mkdir()
    (package / "conf" / "__init__.py").write_text("")
    for name, text in YAMLS.items():
        path = package / "conf" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    info = root / "toy_charlit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-charlit-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def _run(plugin, tmp_path, script, *overrides):
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)]),
        "TOY_PLUGIN_LOG": str(log),
        "CHARLIT_KERNEL_BACKEND": "toy_backend",
    }
    cmd = [sys.executable, script, "model=tiny", "hydra.searchpath=[pkg://toy_charlit_plugin.conf]", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    return proc, log.read_text().split() if log.exists() else []


def _tree_state():
    return subprocess.run(
        ["git", "status", "--porcelain", "--", "charlit", "conf", "train.py", "eval.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout


@pytest.mark.slow  # ~35 s: a tiny training run of an installed plugin package (make test-slow)
def test_a_third_party_objective_teacher_sampler_data_kind_and_kernel_backend_train(plugin, tmp_path):
    before = _tree_state()
    run_dir = tmp_path / "run"
    proc, calls = _run(
        plugin,
        tmp_path,
        "train.py",
        "method=toy",
        "teacher=toy_teacher",
        "sampler=toy_sampler",
        "trainer.max_steps=2",
        "logger=csv",
        "val.every_n_steps=0",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["method"], summary["teacher"], summary["data"], summary["steps"]) == (
        "toy",
        "toy_teacher",
        "toy_prompts",
        2,
    )
    assert summary["metrics"]["train/toy_scale"] == 0.5
    assert {"teacher", "sampler", "kernel"} <= set(calls)
    assert _tree_state() == before

    bad, _ = _run(plugin, tmp_path, "train.py", "method=toy", "method.scale=0", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "charlit: error: method.scale=0 is out of range; it must be > 0" in bad.stderr


@pytest.mark.slow  # generation and a training run, ~20 s: `make test-slow`
def test_a_third_party_data_stage_generates_the_data_a_run_trains_on(plugin, tmp_path):
    run_dir = tmp_path / "run"
    proc, _ = _run(
        plugin,
        tmp_path,
        "train.py",
        "method=sft",
        "data=mottos",
        "trainer.max_steps=1",
        "logger=csv",
        "val.every_n_steps=0",
        f"generation.cache_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dataset = json.loads((run_dir / "summary.json").read_text())["paths"]["dataset"]
    assert "motto" in dataset and open(dataset).read().strip()


def test_a_third_party_eval_suite_and_judge_report(plugin, tmp_path):
    out = tmp_path / "eval"
    proc, _ = _run(
        plugin,
        tmp_path,
        "eval.py",
        "persona=pirate",
        "suite=quick",
        "suite.suites=[reply_length]",
        "judges=[arr]",
        "suite.max_new_tokens=4",
        "logger=none",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "eval.json").read_text())["suites"]["reply_length"]["metrics"]
    assert set(metrics) == {"reply_tokens", "arr"}
    assert 1 <= metrics["reply_tokens"]["model"]["mean"] <= 4
