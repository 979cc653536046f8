"""A throwaway third-party objective (one module + one YAML, in a temporary installed package found through the
``charlit.objectives`` entry point) trains with ``method=<its name>`` without editing any charlit file."""
import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

PLUGIN = '''
"""A toy objective: cross-entropy on assistant tokens, scaled by a setting."""
from dataclasses import dataclass

from charlit.kernels import fused_linear_logprobs
from charlit.models.heads import final_hidden, lm_head
from charlit.objectives.base import CharacterObjective
from charlit.settings import setting


class Toy(CharacterObjective):
    data_kind = "conversations"

    @dataclass
    class Config:
        scale: float = setting(1.0, gt=0)

    def compute_loss(self, batch):
        hidden = final_hidden(self.policy, batch["input_ids"], batch["attention_mask"])[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        head = lm_head(self.policy)
        logp = fused_linear_logprobs(hidden[keep], head.weight, targets[keep], bias=head.bias)
        n_tokens = int(keep.sum())
        return -self.config.scale * logp.sum() / max(n_tokens, 1), {"toy_scale": self.config.scale}, n_tokens
'''

YAML = '''
# @package _global_
defaults:
  - override /data: conversations
method:
  name: toy
  scale: 0.5
'''


def make_plugin(root):
    package = root / "toy_charlit_plugin"
    (package / "conf" / "method").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "method" / "toy.yaml").write_text(textwrap.dedent(YAML).lstrip())
    info = root / "toy_charlit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-charlit-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[charlit.objectives]\ntoy = toy_charlit_plugin:Toy\n")


def test_a_third_party_objective_trains_without_editing_charlit(tmp_path):
    make_plugin(tmp_path / "site")
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    cmd = [sys.executable, "train.py", "method=toy", "model=tiny", "trainer.max_steps=2", "logger=csv",
           "val.every_n_steps=0", "data.batch_size=2", "hydra.searchpath=[pkg://toy_charlit_plugin.conf]",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "toy" and summary["steps"] == 2
    assert summary["metrics"]["train/toy_scale"] == 0.5
    assert subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout == before

    bad = subprocess.run([*cmd[:-1], "method.scale=0", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "charlit: error: method.scale=0 is out of range; it must be > 0" in bad.stderr
