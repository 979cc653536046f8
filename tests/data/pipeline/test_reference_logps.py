"""generate.py data=reference_logps: DPO reference log-probs scored once and stored in the pairs."""

import json

import pytest
import torch

from charlit.data.io import load_pairs
from charlit.data.pipeline.reference_logps import build_reference_logps
from charlit.run import build_objective, train
from tests.conftest import compose
from tests.data.pipeline.helpers import tiny_cfg
from tests.objectives.helpers import response_logits

BUNDLED = ["data.source.path=bundled", "data.source.max_length=1024"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    cfg = tiny_cfg(tmp, "reference_logps", *BUNDLED)
    return tmp, build_reference_logps(cfg)


def test_stored_log_probs_are_the_reference_models_summed_response_log_probs(scored):
    _, path = scored
    rows = load_pairs(path)
    objective, data = build_objective(
        compose(["method=dpo", "model=tiny", "logger=none", f"data.path={path}", "data.max_length=1024"])
    )
    examples = data.items
    assert len(rows) == len(examples) and all("ref_chosen_logp" in e for e in examples)
    with objective.reference.model() as reference:
        for row, e in zip(rows[:4], examples[:4]):
            for key, ids in (("ref_chosen_logp", e["chosen_ids"]), ("ref_rejected_logp", e["rejected_ids"])):
                logp = response_logits(reference, e["context_ids"], ids).log_softmax(-1)
                expected = logp[range(len(ids)), ids].sum().item()  # float64, the full forward
                assert row[key] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_dpo_from_stored_log_probs_has_the_loss_of_dpo_with_the_live_reference(scored):
    _, path = scored
    base = ["method=dpo", "model=tiny", "logger=none", "data.max_length=1024"]
    stored, stored_data = build_objective(compose([*base, f"data.path={path}"]))
    plain = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_pairs(path)]
    plain_path = path.parent.parent / "plain.jsonl"
    plain_path.write_text("".join(json.dumps(r) + "\n" for r in plain))
    live, live_data = build_objective(compose([*base, f"data.path={plain_path}"]))
    batch_stored, batch_live = stored_data.items[:4], live_data.items[:4]
    assert "ref_chosen_logp" not in batch_live[0]
    loss_stored, _, _ = stored.compute_loss(batch_stored)
    loss_live, _, _ = live.compute_loss(batch_live)
    torch.testing.assert_close(loss_stored, loss_live, rtol=1e-4, atol=1e-5)


def test_a_second_build_reuses_the_file_and_other_settings_make_a_new_one(scored, capsys):
    tmp, path = scored
    assert build_reference_logps(tiny_cfg(tmp, "reference_logps", *BUNDLED)) == path
    assert "reusing" in capsys.readouterr().out
    other = build_reference_logps(tiny_cfg(tmp, "reference_logps", "data.source.path=bundled"))  # max_length 512
    assert other != path and (other.parent / "card.md").is_file()
    with pytest.raises(ValueError, match=r"more than data.source.max_length=32.*set data.source.max_length=\d+"):
        build_reference_logps(tiny_cfg(tmp, "reference_logps", "data.source.path=bundled", "data.source.max_length=32"))


def test_wrong_source_and_training_on_it_are_refused_with_what_to_do(tmp_path):
    wrong = "reads a pairs dataset, but data.source has kind 'conversations'.*data@data.source=pairs"
    with pytest.raises(ValueError, match=wrong):
        build_reference_logps(tiny_cfg(tmp_path, "reference_logps", "data@data.source=conversations"))
    with pytest.raises(ValueError, match="data=reference_logps is built by generate.py.*method=dpo data=pairs"):
        train(compose(["method=dpo", "data=reference_logps", "model=tiny", "logger=csv"]), tmp_path / "run")
