"""Direct preference optimisation on (prompt, chosen, rejected) pairs, with OCT's optional extra terms.

Sequence log-probs ``π_c, π_r`` are sums over the response tokens of ``log π(y_t | ·)`` from
``fused_linear_logprobs`` on the policy's hidden states (no ``[tokens, vocab]`` logits); ``ref_c, ref_r``
come from the reference (the frozen starting model: with LoRA the base with the adapter disabled; with
full fine-tuning a frozen copy) or, when the data rows carry them, from ``ref_chosen_logp`` /
``ref_rejected_logp``. With ``z = (π_c − π_r) − (ref_c − ref_r)``, per pair (TRL's definitions):

* ``sigmoid``: ``−log σ(β z)``  (DPO)
* ``hinge``:   ``max(0, 1 − β z)``  (SLiC)
* ``ipo``:     ``(z − 1/(2β))²``  (IPO); as in TRL, IPO uses length-normalised log-probs: every sequence
  log-prob (policy and reference, stored ones included) is divided by its response token count.

The pair losses are averaged over the global batch's pairs. Optional terms:

* ``nll_coef · NLL``: ``NLL = −Σ log π(chosen tokens) / (number of chosen tokens)`` (OCT uses 0.1);
* ``kl_coef · KL``: the exact reverse KL to the reference over the full vocabulary,
  ``KL = Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) / (number of chosen tokens)`` at every chosen-response
  position (fused divergence, ``beta=1``). It needs the reference's hidden states, so with stored reference
  log-probs the reference still runs on the chosen responses when ``kl_coef > 0``.

Logged: ``rewards/chosen`` = ``β(π_c − ref_c)``, ``rewards/rejected``, ``rewards/margins`` (their difference),
``rewards/accuracy`` (fraction of pairs with chosen reward > rejected reward), ``logps/chosen|rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charlit.kernels import fused_linear_divergence
from charlit.models.heads import lm_head
from charlit.models.sequences import paired_response_logps, response_hidden, segment_sum
from charlit.objectives.base import CharacterObjective
from charlit.objectives.registry import OBJECTIVES
from charlit.settings import setting

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def preference_losses(loss_type: str, beta: float, policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """Per-pair DPO-family losses from sequence log-probs (TRL's ``sigmoid`` / ``hinge`` / ``ipo``)."""
    z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * z)
    if loss_type == "hinge":
        return torch.relu(1 - beta * z)
    if loss_type == "ipo":
        return (z - 1 / (2 * beta)) ** 2
    raise ValueError(f"method.loss_type={loss_type!r} is not valid; choose one of {', '.join(LOSS_TYPES)}.")


@OBJECTIVES.register("dpo")
class DPO(CharacterObjective):
    data_kind = "pairs"

    @dataclass
    class Config:
        loss_type: str = setting("sigmoid", choices=LOSS_TYPES)
        beta: float = setting(0.1, gt=0)
        nll_coef: float = setting(0.0, ge=0, help="NLL per chosen token (OCT uses 0.1); 0 = off")
        kl_coef: float = setting(0.0, ge=0, help="reverse KL to the reference per chosen token; 0 = off")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.loss_type, self.beta = config.loss_type, config.beta
        self.nll_coef, self.kl_coef = config.nll_coef, config.kl_coef

    def _logps(self, model, contexts, chosen, rejected):
        return paired_response_logps(model, contexts, chosen, rejected, self.tokenizer.pad_token_id)

    def compute_loss(self, batch):
        n = len(batch)
        contexts = [e["context_ids"] for e in batch]
        chosen, rejected = [e["chosen_ids"] for e in batch], [e["rejected_ids"] for e in batch]
        lengths = [len(r) for r in chosen + rejected]
        n_chosen = sum(lengths[:n])
        token_logps, hidden, head = self._logps(self.policy, contexts, chosen, rejected)
        policy_seq = segment_sum(token_logps, lengths)

        stored = "ref_chosen_logp" in batch[0]
        ref_hidden = ref_head = None
        if stored:
            ref_seq = torch.tensor(
                [e["ref_chosen_logp"] for e in batch] + [e["ref_rejected_logp"] for e in batch],
                dtype=policy_seq.dtype,
                device=policy_seq.device,
            )
        with torch.no_grad(), self.reference.model() as reference:
            if not stored:
                ref_tokens, ref_hidden, ref_head = self._logps(reference, contexts, chosen, rejected)
                ref_seq = segment_sum(ref_tokens, lengths)
            elif self.kl_coef > 0:
                ref_hidden = response_hidden(reference, contexts, chosen, self.tokenizer.pad_token_id)
                ref_head = lm_head(reference)
            if ref_head is not None:
                ref_head = type(ref_head)(
                    ref_head.weight.detach(),
                    None if ref_head.bias is None else ref_head.bias.detach(),
                    ref_head.softcap,
                )

        if self.loss_type == "ipo":
            count = torch.tensor(lengths, dtype=policy_seq.dtype, device=policy_seq.device).clamp_min(1)
            policy_seq, ref_seq = policy_seq / count, ref_seq / count
        pc, pr, rc, rr = policy_seq[:n], policy_seq[n:], ref_seq[:n], ref_seq[n:]
        losses = preference_losses(self.loss_type, self.beta, pc, pr, rc, rr)
        loss = losses.sum() / max(self.global_num_items(n), 1.0)
        pref = loss.detach().item()

        chosen_tokens = max(self.global_num_items(n_chosen), 1.0)
        metrics = {}
        if self.nll_coef > 0:
            nll = -token_logps[:n_chosen].sum() / chosen_tokens
            loss = loss + self.nll_coef * nll
            metrics["nll"] = nll.detach().item()
        if self.kl_coef > 0:
            kl = fused_linear_divergence(
                hidden[:n_chosen],
                head.weight,
                ref_hidden[:n_chosen],
                ref_head.weight,
                beta=1.0,
                num_items=chosen_tokens,
                student_bias=head.bias,
                teacher_bias=ref_head.bias,
                softcap=head.softcap,
            )
            loss = loss + self.kl_coef * kl
            metrics["kl"] = kl.detach().item()

        with torch.no_grad():
            chosen_rewards, rejected_rewards = self.beta * (pc - rc), self.beta * (pr - rr)
            metrics.update(
                {
                    "preference_loss": pref,
                    "rewards/chosen": chosen_rewards.mean().item(),
                    "rewards/rejected": rejected_rewards.mean().item(),
                    "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
                    "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
                    "logps/chosen": pc.mean().item(),
                    "logps/rejected": pr.mean().item(),
                }
            )
        return loss, metrics, sum(lengths)
