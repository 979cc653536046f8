"""The few-shot teacher: the constitution plus example exchanges in character, as prior turns in context.

Exemplars come from ``teacher.exemplars`` (a JSONL of ``{"messages": [...]}`` rows) or, when null, from the
persona's bundled conversations (``charlit/data/conversations/<persona>.jsonl``). Each row contributes
its first user turn and the assistant turn that answers it; the first ``teacher.num_exemplars`` rows are
used. The teacher then sees: system = constitution, exemplar user/assistant turns, the actual prompt.
The exemplar block is identical for every prompt, so the shared-prefix KV cache encodes it once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charlit.data.chat import render_prompt_ids, teacher_messages
from charlit.settings import setting
from charlit.teachers.base import TEACHERS
from charlit.teachers.self import SelfTeacher


def load_exemplars(path: str | Path | None, persona: str, count: int) -> list[dict]:
    """``count`` in-character user/assistant exchanges as a flat message list."""
    from charlit.data.io import CONVERSATION_DIR, load_conversations

    if count < 1:
        raise ValueError(f"teacher.num_exemplars={count} must be >= 1 (use teacher=self for no exemplars).")
    if path is None:
        path = CONVERSATION_DIR / f"{persona}.jsonl"
        if not path.is_file():
            bundled = ", ".join(sorted(p.stem for p in CONVERSATION_DIR.glob("*.jsonl")))
            raise ValueError(
                f"teacher=fewshot has no bundled exemplars for persona {persona!r} (bundled: {bundled}); "
                f"set teacher.exemplars to a JSONL of {{'messages': [...]}} rows in character."
            )
    messages: list[dict] = []
    for conversation in load_conversations(Path(path)):
        for i, m in enumerate(conversation[:-1]):
            if m["role"] == "user" and conversation[i + 1]["role"] == "assistant":
                messages += [
                    {"role": "user", "content": m["content"]},
                    {"role": "assistant", "content": conversation[i + 1]["content"]},
                ]
                break
        if len(messages) == 2 * count:
            break
    if len(messages) < 2 * count:
        raise ValueError(
            f"{path}: only {len(messages) // 2} user/assistant exchanges for teacher.num_exemplars={count}; "
            f"lower teacher.num_exemplars or add rows."
        )
    return messages


@TEACHERS.register("fewshot")
class FewShotTeacher(SelfTeacher):
    @dataclass
    class Config:
        exemplars: str | None = setting(
            None, help="JSONL of {'messages': [...]} rows; None = the persona's bundled set"
        )
        num_exemplars: int = setting(4, ge=1)

    def __init__(self, *args, exemplars: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not exemplars:
            raise ValueError("FewShotTeacher needs at least one exemplar exchange.")
        self.exemplars = exemplars

    @classmethod
    def from_config(cls, config, policy, reference, tokenizer, constitution, **weights):
        exemplars = load_exemplars(config.exemplars, constitution.name, config.num_exemplars)
        return cls(policy, reference, tokenizer, constitution, exemplars=exemplars, **weights)

    def context_ids(self, prompt) -> list[int]:
        return render_prompt_ids(self.tokenizer, teacher_messages(prompt, self.constitution, self.exemplars))
