"""The likelihood judge as a :class:`PersonaJudge`: per-reply ``persona_gain`` under the frozen base model."""

from __future__ import annotations

from charlit.data.constitution import Constitution
from charlit.eval.judges.base import JUDGES, PersonaJudge, Reply
from charlit.eval.likelihood_judge import persona_gain


@JUDGES.register("likelihood")
class LikelihoodJudge(PersonaJudge):
    name = "likelihood"

    def __init__(self, *, base_model, tokenizer, batch_size: int = 8, **_):
        self.model, self.tokenizer, self.batch_size = base_model, tokenizer, batch_size

    def score(self, replies: list[Reply], constitution: Constitution) -> list[float]:
        out: list[float] = []
        for i in range(0, len(replies), self.batch_size):
            chunk = replies[i : i + self.batch_size]
            keep = [r for r in chunk if r.ids]
            gains = (
                iter(
                    persona_gain(
                        self.model, self.tokenizer, constitution, [r.prompt for r in keep], [list(r.ids) for r in keep]
                    ).tolist()
                )
                if keep
                else iter(())
            )
            out.extend(next(gains) if r.ids else 0.0 for r in chunk)
        return out
