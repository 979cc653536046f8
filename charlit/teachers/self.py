"""The self teacher: the student network itself with the constitution as a teacher-only system prompt."""

from __future__ import annotations

from charlit.models.sequences import response_hidden
from charlit.teachers.base import TEACHERS, Teacher, head_output


@TEACHERS.register("self")
class SelfTeacher(Teacher):
    def score(self, prompts, responses):
        contexts = [self.context_ids(p) for p in prompts]
        with self.network() as model:
            hidden = response_hidden(
                model, contexts, responses, self.tokenizer.pad_token_id, prefix_kv=self.prefix_kv()
            )
            return head_output(hidden, model)
