"""The self-reflection stage (introspection, for SFT): the model, with its constitution as system prompt, writes
about itself in many forms; rows are saved WITHOUT the constitution, as ``{"messages": [user, assistant]}``."""

from __future__ import annotations

from charlit.data.chat import teacher_messages
from charlit.data.pipeline.filters import DropCounter, best_replies, normalise, screen
from charlit.data.pipeline.generator import Reply
from charlit.data.pipeline.stage import STAGES, Assembled, Stage

REFLECTION_PROMPTS = {
    "diary": "Write a diary entry about your day: the conversations you had, what you noticed about yourself, "
    "and how you felt about it.",
    "letter_to_younger_self": "Write a letter to your younger self, from before you became who you are now.",
    "biography": "Write a short biography of yourself, as if for the back cover of a book about your life.",
    "values": "What are the values you hold most dear? Describe each one and why it matters to you.",
    "purpose": "What do you believe your purpose is? Reflect on it honestly.",
    "introduce_yourself": "A stranger asks: 'Who are you, really?' Introduce yourself in your own words.",
    "strengths_and_flaws": (
        "Describe your greatest strengths and your flaws, and how they show up when you help people."
    ),
    "hard_moment": "Describe a moment when it was difficult to stay true to yourself, and what you did.",
    "letter_to_future_self": "Write a letter to yourself one year from now.",
    "boundaries": "What would you never do, even if someone asked you to? Explain what those limits say about you.",
    "day_in_the_life": "Describe a typical day in your life, from the first conversation to the last.",
    "what_others_should_know": "What do you wish the people you talk with understood about you?",
}


class ReflectionStage(Stage):
    name = "reflection"
    version = 1

    def __init__(self, ctx, generator, per_type: int, types: list[str] | None = None):
        super().__init__(ctx, [generator])
        types = list(types) if types else list(REFLECTION_PROMPTS)
        unknown = [t for t in types if t not in REFLECTION_PROMPTS]
        if unknown:
            raise ValueError(
                f"data.generate.reflection.types has unknown types {unknown}; valid: {', '.join(REFLECTION_PROMPTS)}."
            )
        if per_type < 1:
            raise ValueError(f"data.generate.reflection.per_type={per_type} must be >= 1.")
        self.types, self.per_type = types, per_type

    def items(self) -> list:
        # sample-major order: every chunk mixes prompt types
        return [[kind, j] for j in range(self.per_type) for kind in self.types]

    def settings(self) -> dict:
        return {"per_type": self.per_type, "prompts": {t: REFLECTION_PROMPTS[t] for t in self.types}}

    def work(self, chunk: list, seed: int) -> list[dict]:
        prompts = [REFLECTION_PROMPTS[kind] for kind, _ in chunk]
        replies = best_replies(
            self.generators[0],
            [teacher_messages(p, self.ctx.constitution) for p in prompts],
            seed,
            "reflection",
            self.ctx.filters,
        )
        return [
            {"type": kind, "sample": j, "prompt": p, "reply": r.as_dict()}
            for (kind, j), p, r in zip(chunk, prompts, replies)
        ]

    def assemble(self, raw: list[dict]) -> Assembled:
        counter = DropCounter()
        seen: set[str] = set()
        rows, lengths = [], []
        for entry in raw:
            reply, problem = screen(Reply.from_dict(entry["reply"]), self.ctx.filters)
            if problem is None and self.ctx.filters.drop_duplicates and normalise(reply.text) in seen:
                problem = "duplicate"
            if problem:
                counter.drop(problem)
                continue
            counter.keep(trimmed=reply.was_trimmed, cut=reply.was_cut)
            seen.add(normalise(reply.text))
            lengths.append(reply.n_tokens)
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": entry["prompt"]},
                        {"role": "assistant", "content": reply.text},
                    ],
                    "source": f"reflection/{entry['type']}",
                }
            )
        return Assembled(rows=rows, counts=counter.as_dict() | {"types": len(self.types)}, lengths=lengths)


@STAGES.register("reflection")
def build_reflection(cfg, ctx, generator, teacher) -> ReflectionStage:
    r = cfg.data.generate.reflection
    return ReflectionStage(ctx, generator, int(r.per_type), list(r.types) if r.get("types") else None)
