"""The prompts stage: the constitution's questions plus bundled general prompts, optionally extended with
prompts the generator writes from few-shot examples of them, near-duplicates removed."""

from __future__ import annotations

import random
import re

from charlit.data.pipeline.filters import DropCounter, best_replies, char_ngrams, near_duplicate_of, screen
from charlit.data.pipeline.generator import Reply
from charlit.data.pipeline.stage import Assembled, Stage
from charlit.data.prompts import training_prompts

FEW_SHOT_EXAMPLES = 5
FEW_SHOT_INSTRUCTION = (
    "Here are some questions and requests people have sent to an AI assistant:\n\n{examples}\n\n"
    "Write one new question or request of the same kind, on a different topic. "
    "Reply with the new question only."
)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def select_prompts(sets, constitution, num: int | None, seed: int) -> list[str]:
    """The deduplicated union of ``sets``; with ``num``, that many drawn by a shuffle seeded by ``seed``."""
    prompts = training_prompts(list(sets), constitution)
    if num is None or num >= len(prompts):
        return prompts
    if num < 1:
        raise ValueError(f"data.generate.prompts.num={num} must be >= 1 (or null for every prompt).")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in sorted(order[:num])]


def first_question(text: str) -> str:
    """The first non-empty line of a reply, without list markers or surrounding quotes."""
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line).strip().strip('"“”').strip()
        if line:
            return line
    return ""


class GeneratedPromptsStage(Stage):
    """``count`` new prompts, each written by the generator (no constitution) from few-shot seed prompts."""

    name = "prompts"
    version = 1

    def __init__(self, ctx, generators, seed_prompts: list[str], count: int, threshold: float):
        super().__init__(ctx, generators)
        if not 0 < threshold <= 1:
            raise ValueError(f"data.generate.prompts.near_duplicate_threshold={threshold} must be in (0, 1].")
        self.seed_prompts, self.count, self.threshold = seed_prompts, count, threshold

    def items(self) -> list:
        return list(range(self.count))

    def settings(self) -> dict:
        return {
            "seed_prompts": self.seed_prompts,
            "count": self.count,
            "near_duplicate_threshold": self.threshold,
            "few_shot": FEW_SHOT_EXAMPLES,
            "instruction": FEW_SHOT_INSTRUCTION,
        }

    def work(self, chunk: list, seed: int) -> list[dict]:
        rng = random.Random(seed)
        requests = []
        for _ in chunk:
            shots = rng.sample(self.seed_prompts, min(FEW_SHOT_EXAMPLES, len(self.seed_prompts)))
            examples = "\n".join(f"- {q}" for q in shots)
            requests.append([{"role": "user", "content": FEW_SHOT_INSTRUCTION.format(examples=examples)}])
        replies = best_replies(self.generators[0], requests, seed, "prompts", self.ctx.filters)
        return [{"item": i, "reply": r.as_dict()} for i, r in zip(chunk, replies)]

    def assemble(self, raw: list[dict]) -> Assembled:
        counter = DropCounter()
        known = [char_ngrams(p) for p in self.seed_prompts]
        rows, lengths = [], []
        for entry in raw:
            reply, problem = screen(Reply.from_dict(entry["reply"]), self.ctx.filters)
            question = first_question(reply.text) if reply else ""
            if problem is None and not question:
                problem = "empty"
            if problem is None and near_duplicate_of(question, known, self.threshold) is not None:
                problem = "near_duplicate"
            if problem:
                counter.drop(problem)
                continue
            counter.keep(trimmed=reply.was_trimmed, cut=reply.was_cut)
            known.append(char_ngrams(question))
            rows.append({"prompt": question, "source": "generated"})
            lengths.append(reply.n_tokens)
        return Assembled(rows=rows, counts=counter.as_dict(), lengths=lengths)
