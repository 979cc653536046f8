import json
import math

import pytest
import torch

from charlit.data.io import PAIR_DIR, load_pairs
from charlit.data.prompts import load_prompt_set
from charlit.objectives.dpo import preference_losses
from tests.objectives.helpers import kl, lowers_own_loss, perturb, response_logits, tiny_objective


def test_preference_losses_match_closed_forms():
    pc, pr = torch.tensor([-10.0, -4.0], dtype=torch.float64), torch.tensor([-12.0, -3.0], dtype=torch.float64)
    rc, rr = torch.tensor([-11.0, -5.0], dtype=torch.float64), torch.tensor([-11.5, -2.5], dtype=torch.float64)
    beta = 0.5
    z = [(-10 + 12) - (-11 + 11.5), (-4 + 3) - (-5 + 2.5)]  # 1.5, 1.5 ... by hand
    assert z == [1.5, 1.5]
    sig = preference_losses("sigmoid", beta, pc, pr, rc, rr)
    torch.testing.assert_close(sig, torch.tensor([math.log(1 + math.exp(-0.75))] * 2, dtype=torch.float64))
    hinge = preference_losses("hinge", beta, pc, pr, rc, rr)
    torch.testing.assert_close(hinge, torch.tensor([0.25, 0.25], dtype=torch.float64))
    ipo = preference_losses("ipo", beta, pc, pr, rc, rr)
    torch.testing.assert_close(ipo, torch.tensor([0.25, 0.25], dtype=torch.float64))  # (1.5 - 1)^2
    big = preference_losses("hinge", 1.0, pc, pr, rc, rr)
    assert big.tolist() == [0.0, 0.0]  # margin met: no loss
    with pytest.raises(ValueError, match="loss_type='kto'"):
        preference_losses("kto", beta, pc, pr, rc, rr)


def _by_hand(objective, batch, beta, loss_type, nll_coef, kl_coef):
    """The whole DPO loss from full float64 logits of policy and reference."""
    with objective.reference.model() as ref_model:
        rows = []
        for e in batch:
            row = {}
            for key in ("chosen_ids", "rejected_ids"):
                pol = response_logits(objective.policy, e["context_ids"], e[key])
                ref = response_logits(ref_model, e["context_ids"], e[key])
                y = torch.tensor(e[key])
                row[key] = (pol.log_softmax(-1)[range(len(y)), y], ref.log_softmax(-1)[range(len(y)), y], pol, ref)
            rows.append(row)
    losses, nll_num, kl_num, n_chosen = [], 0.0, 0.0, 0
    for row in rows:
        lp_c, lr_c, pol_c, ref_c = row["chosen_ids"]
        lp_r, lr_r, _, _ = row["rejected_ids"]
        seq = [lp_c.sum(), lp_r.sum(), lr_c.sum(), lr_r.sum()]
        if loss_type == "ipo":
            seq = [seq[0] / len(lp_c), seq[1] / len(lp_r), seq[2] / len(lp_c), seq[3] / len(lp_r)]
        z = (seq[0] - seq[1]) - (seq[2] - seq[3])
        losses.append(
            {
                "sigmoid": -torch.nn.functional.logsigmoid(beta * z),
                "hinge": torch.relu(1 - beta * z),
                "ipo": (z - 1 / (2 * beta)) ** 2,
            }[loss_type]
        )
        nll_num += -lp_c.sum()
        kl_num += kl(pol_c, ref_c).sum()  # KL(policy || reference) per chosen position
        n_chosen += len(lp_c)
    return sum(losses) / len(rows) + nll_coef * nll_num / n_chosen + kl_coef * kl_num / n_chosen


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_matches_full_logit_computation(loss_type):
    objective, datamodule = tiny_objective(
        "dpo", f"method.loss_type={loss_type}", "method.nll_coef=0.1", "method.kl_coef=0.05", "method.beta=0.3"
    )
    perturb(objective.policy)  # the reference keeps the initial weights
    batch = next(iter(datamodule.train_dataloader()))
    loss, metrics, n_tokens = objective.compute_loss(batch)
    expected = _by_hand(objective, batch, 0.3, loss_type, 0.1, 0.05)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=2e-6)
    assert n_tokens == sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in batch)
    assert metrics["rewards/margins"] == pytest.approx(
        metrics["rewards/chosen"] - metrics["rewards/rejected"], abs=1e-6
    )
    assert 0.0 <= metrics["rewards/accuracy"] <= 1.0


def test_stored_reference_logps_replace_the_reference(tmp_path):
    objective, datamodule = tiny_objective("dpo", "method.beta=0.2")
    batch = next(iter(datamodule.train_dataloader()))[:2]
    stored = [dict(e, ref_chosen_logp=-40.0 - i, ref_rejected_logp=-30.0 + i) for i, e in enumerate(batch)]
    loss, metrics, _ = objective.compute_loss(stored)
    expected = 0.0
    for e in stored:
        lc = response_logits(objective.policy, e["context_ids"], e["chosen_ids"]).log_softmax(-1)
        lr = response_logits(objective.policy, e["context_ids"], e["rejected_ids"]).log_softmax(-1)
        pc = lc[range(len(e["chosen_ids"])), e["chosen_ids"]].sum()
        pr = lr[range(len(e["rejected_ids"])), e["rejected_ids"]].sum()
        z = (pc - pr) - (e["ref_chosen_logp"] - e["ref_rejected_logp"])
        expected = expected - torch.nn.functional.logsigmoid(0.2 * z) / len(stored)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=2e-6)
    assert metrics["rewards/chosen"] != 0.0


def test_dpo_steps_lower_its_own_loss():
    objective, datamodule = tiny_objective("dpo", "method.nll_coef=0.1")
    batch = next(iter(datamodule.train_dataloader()))
    first, last = lowers_own_loss(objective, batch, steps=4, lr=3e-3)
    assert last < first - 1e-3, (first, last)


def test_bundled_pairs_are_valid_and_disjoint_from_heldout():
    pairs = load_pairs(PAIR_DIR / "pirate.jsonl")
    assert len(pairs) >= 40
    heldout = {" ".join(p.lower().split()) for p in load_prompt_set("general_heldout")}
    for row in pairs:
        user = " ".join(row["prompt"][-1]["content"].lower().split())
        assert user not in heldout
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": [], "rejected": []}, "row 2: 'prompt' must"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "row 2: 'chosen' must be a list with exactly one assistant",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
                "ref_chosen_logp": -3.0,
            },
            "row 2: 'ref_chosen_logp' and",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
                "ref_chosen_logp": -3.0,
                "ref_rejected_logp": -2.0,
            },
            "row 1 has no reference log-probs but other rows do",
        ),
    ],
)
def test_bad_pair_rows_name_file_and_row(tmp_path, row, message):
    good = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError) as err:
        load_pairs(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_dpo_refuses_other_data_kinds_and_bad_settings():
    with pytest.raises(ValueError, match="method=dpo trains on pairs but data=prompts"):
        tiny_objective("dpo", "data=prompts")
    with pytest.raises(ValueError, match="method.loss_type='squared'"):
        tiny_objective("dpo", "method.loss_type=squared")
