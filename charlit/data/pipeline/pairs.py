"""The pairs stage (for DPO): chosen = the teacher answering with the constitution as its system prompt,
rejected = the student answering the bare prompt; ``k`` samples per prompt.

Rows are TRL's conversational preference format: ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``.
"""

from __future__ import annotations

from charlit.data.chat import student_messages, teacher_messages
from charlit.data.pipeline.filters import DropCounter, best_replies, normalise, screen
from charlit.data.pipeline.generator import Generator, Reply
from charlit.data.pipeline.prompts import GeneratedPromptsStage, select_prompts
from charlit.data.pipeline.stage import STAGES, Assembled, Stage, StageContext, run_stage


class PairsStage(Stage):
    name = "pairs"
    version = 1

    def __init__(self, ctx, teacher, student, prompts: list[str], k: int):
        super().__init__(ctx, [teacher, student])
        if k < 1:
            raise ValueError(f"data.generate.pairs.k={k} must be >= 1 (samples per prompt).")
        if not prompts:
            raise ValueError("The pairs stage got no prompts; check data.generate.prompts.")
        self.teacher, self.student, self.prompts, self.k = teacher, student, prompts, k

    def items(self) -> list:
        return [[prompt, j] for prompt in self.prompts for j in range(self.k)]

    def settings(self) -> dict:
        return {"k": self.k, "num_prompts": len(self.prompts)}

    def work(self, chunk: list, seed: int) -> list[dict]:
        prompts = [prompt for prompt, _ in chunk]
        filters = self.ctx.filters
        chosen = best_replies(
            self.teacher, [teacher_messages(p, self.ctx.constitution) for p in prompts], seed, "pairs: teacher", filters
        )
        rejected = best_replies(
            self.student, [student_messages(p) for p in prompts], seed + 1, "pairs: student", filters
        )
        return [
            {"prompt": p, "sample": j, "chosen": c.as_dict(), "rejected": r.as_dict()}
            for (p, j), c, r in zip(chunk, chosen, rejected)
        ]

    def assemble(self, raw: list[dict]) -> Assembled:
        counter = DropCounter()
        seen: set[tuple[str, str]] = set()
        rows, lengths = [], []
        for entry in raw:
            chosen, problem = screen(Reply.from_dict(entry["chosen"]), self.ctx.filters)
            rejected, rejected_problem = screen(Reply.from_dict(entry["rejected"]), self.ctx.filters)
            problem = problem or rejected_problem
            key = (entry["prompt"], normalise(chosen.text)) if chosen else None
            if (
                problem is None
                and self.ctx.filters.drop_duplicates
                and (key in seen or normalise(chosen.text) == normalise(rejected.text))
            ):
                problem = "duplicate"
            if problem:
                counter.drop(problem)
                continue
            counter.keep(trimmed=chosen.was_trimmed or rejected.was_trimmed, cut=chosen.was_cut or rejected.was_cut)
            seen.add(key)
            lengths.append(chosen.n_tokens)
            rows.append(
                {
                    "prompt": [{"role": "user", "content": entry["prompt"]}],
                    "chosen": [{"role": "assistant", "content": chosen.text}],
                    "rejected": [{"role": "assistant", "content": rejected.text}],
                }
            )
        counts = counter.as_dict() | {
            "prompts": len(self.prompts),
            "k": self.k,
            "rejected_mean_tokens": _mean([Reply.from_dict(e["rejected"]).n_tokens for e in raw]),
        }
        return Assembled(rows=rows, counts=counts, lengths=lengths)


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def pair_prompts(cfg, ctx: StageContext, generator: Generator) -> list[str]:
    """``data.generate.prompts``: a seeded selection of prompt sets plus ``generated`` prompts the model writes."""
    spec = cfg.data.generate.prompts
    num = spec.get("num")
    prompts = select_prompts(spec.sets, ctx.constitution, None if num is None else int(num), ctx.seed)
    extra = int(spec.get("generated", 0))
    if extra > 0:
        threshold = float(spec.get("near_duplicate_threshold", 0.6))
        stage = GeneratedPromptsStage(ctx, [generator], prompts, extra, threshold)
        prompts = prompts + [row["prompt"] for row in run_stage(stage).rows]
    return prompts


@STAGES.register("pairs")
def build_pairs(cfg, ctx, generator, teacher) -> PairsStage:
    return PairsStage(ctx, teacher(), generator, pair_prompts(cfg, ctx, generator), int(cfg.data.generate.pairs.k))
