"""Supervised fine-tuning on conversations: cross-entropy on every assistant turn, never on user or system
text, normalised over the global batch's assistant tokens."""

from __future__ import annotations

from dataclasses import dataclass

from charlit.kernels import fused_linear_logprobs
from charlit.models.heads import final_hidden, lm_head
from charlit.objectives.base import CharacterObjective
from charlit.objectives.registry import OBJECTIVES
from charlit.settings import setting


@OBJECTIVES.register("sft")
class SFT(CharacterObjective):
    data_kind = "conversations"

    @dataclass
    class Config:
        temperature: float = setting(1.0, gt=0, help="loss temperature")

    def compute_loss(self, batch):
        input_ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        hidden = final_hidden(self.policy, input_ids, attention)[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        n_tokens = int(keep.sum())
        head = lm_head(self.policy)
        flat_hidden = hidden[keep]
        logp = fused_linear_logprobs(
            flat_hidden,
            head.weight,
            targets[keep],
            bias=head.bias,
            softcap=head.softcap,
            temperature=self.config.temperature,
        )
        loss = -logp.sum() / max(self.global_num_items(n_tokens), 1.0)
        return loss, {"nll": (-logp.detach().mean()).item() if n_tokens else 0.0}, n_tokens
