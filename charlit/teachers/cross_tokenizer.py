"""The teacher side of cross-tokenizer distillation (``teacher=external teacher.cross_tokenizer=true``).

Each student response is turned back into its bytes, re-tokenized by the teacher and aligned
(:mod:`charlit.teachers.alignment`); the teacher scores its own tokens after its own rendering of the prompt, and
its outputs are reduced to what the loss (:func:`charlit.kernels.cross_tokenizer_divergence`) needs, so the
teacher's 100k+-row lm_head is applied here once, under ``no_grad``, in row tiles:

- exact groups: the teacher's distribution over the student's vocabulary as top-k + tail rows;
- span groups: the teacher's merged, sorted top-k log-probs per group.

The student's end-of-sequence token (no bytes) is matched with the teacher's end of turn (``end_of_turn``,
default the teacher tokenizer's EOS) as one more exact group. A response whose bytes end inside a UTF-8
character (a sample cut at the token limit) is aligned up to its last complete character; the tokens after it
are left out of the loss and counted in ``unaligned``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charlit.kernels.cross_tokenizer import mapped_topk_teacher, merged_span_logprobs, span_logprobs
from charlit.models.heads import lm_head
from charlit.models.sequences import response_hidden
from charlit.teachers.alignment import Group, align, token_bytes, vocabulary_map


@dataclass
class CrossTokenizerTeacherOutput:
    """What the loss needs from a teacher with another tokenizer; every ``*_rows`` indexes the student's response
    rows (example-major, as :class:`~charlit.teachers.base.TeacherOutput` rows)."""

    exact_rows: torch.Tensor  # [E] int64
    exact_ids: torch.Tensor  # [E, k] student ids
    exact_logprobs: torch.Tensor  # [E, k]
    exact_tail: torch.Tensor  # [E]
    span_rows: torch.Tensor  # [S] int64, grouped contiguously
    span_targets: torch.Tensor  # [S] the student's realised tokens
    span_group: torch.Tensor  # [S] group index of each row
    span_first: torch.Tensor  # [S] bool: first row of its group
    span_teacher: torch.Tensor  # [G, k] the teacher's merged log-probs, descending
    span_weight: torch.Tensor  # [G] student tokens in the group
    uld_weight: float
    unaligned: int  # student tokens left out (after a broken UTF-8 character)


class CrossTokenizer:
    """Aligns the student's responses with a teacher tokenizer and scores them with the teacher."""

    def __init__(self, student_tokenizer, teacher_tokenizer, k: int = 64, uld_weight: float = 1.0, end_of_turn=None):
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.k, self.uld_weight = k, uld_weight
        self.student_bytes = token_bytes(student_tokenizer)
        self.teacher_bytes = token_bytes(teacher_tokenizer)
        self.vocab_map = vocabulary_map(self.teacher_bytes, self.student_bytes)
        self.student_eos = student_tokenizer.eos_token_id
        name = end_of_turn or teacher_tokenizer.eos_token
        eot = teacher_tokenizer.convert_tokens_to_ids(name) if name is not None else None
        if eot is None or eot == teacher_tokenizer.unk_token_id:
            raise ValueError(
                f"teacher.end_of_turn={name!r} is not a token of the teacher's tokenizer; name the token that ends the "
                f"teacher's turn (e.g. <end_of_turn> for Gemma)."
            )
        self.teacher_eot = eot
        if self.student_eos is not None:
            self.vocab_map[eot] = self.student_eos
        self.shared = int((self.vocab_map >= 0).sum())

    def retokenize(self, response: list[int]) -> tuple[list[int], list[Group], int]:
        """The teacher's tokens for a student response, the aligned groups and the count of student tokens left
        out."""
        ends_with_eos = bool(response) and response[-1] == self.student_eos
        body = list(response[:-1] if ends_with_eos else response)
        keep = len(body)
        text = None
        while text is None:
            raw = b"".join(self.student_bytes[i] for i in body[:keep])
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:  # cut back to the last token ending before the broken character
                total, cut = 0, 0
                for j, i in enumerate(body[:keep]):
                    total += len(self.student_bytes[i])
                    if total > err.start:
                        break
                    cut = j + 1
                keep = cut
        teacher_ids = self.teacher_tokenizer.encode(text, add_special_tokens=False)
        groups = align(body[:keep], teacher_ids, self.student_bytes, self.teacher_bytes)
        left_out = len(body) - keep
        if ends_with_eos:
            if left_out:
                left_out += 1
            else:
                teacher_ids.append(self.teacher_eot)
                groups.append(Group(keep, keep + 1, len(teacher_ids) - 1, len(teacher_ids)))
        return teacher_ids, groups, left_out

    @torch.no_grad()
    def score(self, model, contexts: list[list[int]], responses: list[list[int]], student_vocab: int):
        """Run the teacher ``model`` on its tokenization of ``responses`` after its ``contexts``."""
        retokenized = [self.retokenize(r) for r in responses]
        teacher_responses = [t for t, _, _ in retokenized]
        hidden = response_hidden(model, contexts, teacher_responses, self.teacher_tokenizer.pad_token_id)
        device = hidden.device
        exact_s, exact_t = [], []
        span_s, span_targets, span_group, span_first = [], [], [], []
        t_rows, t_targets, t_group, t_first = [], [], [], []
        weights = []
        s_off = t_off = 0
        for response, (teacher_ids, groups, _) in zip(responses, retokenized):
            for g in groups:
                if g.exact:
                    exact_s.append(s_off + g.s0)
                    exact_t.append(t_off + g.t0)
                    continue
                index = len(weights)
                weights.append(g.s1 - g.s0)
                for j in range(g.s0, g.s1):
                    span_s.append(s_off + j)
                    span_targets.append(response[j])
                    span_group.append(index)
                    span_first.append(j == g.s0)
                for j in range(g.t0, g.t1):
                    t_rows.append(t_off + j)
                    t_targets.append(teacher_ids[j])
                    t_group.append(index)
                    t_first.append(j == g.t0)
            s_off += len(response)
            t_off += len(teacher_ids)

        def long(values):
            return torch.tensor(values, dtype=torch.long, device=device)

        head = lm_head(model)
        ids, logprobs, tail = mapped_topk_teacher(
            hidden[long(exact_t)], head.weight, self.vocab_map, student_vocab, self.k, head.bias, head.softcap
        )
        t_first_mask = torch.tensor(t_first, dtype=torch.bool, device=device)
        realized, top = span_logprobs(
            hidden[long(t_rows)], head.weight, long(t_targets), t_first_mask, self.k, head.bias, head.softcap
        )
        teacher_merged = merged_span_logprobs(realized, top, long(t_group), t_first_mask)
        return CrossTokenizerTeacherOutput(
            exact_rows=long(exact_s),
            exact_ids=ids,
            exact_logprobs=logprobs,
            exact_tail=tail,
            span_rows=long(span_s),
            span_targets=long(span_targets),
            span_group=long(span_group),
            span_first=torch.tensor(span_first, dtype=torch.bool, device=device),
            span_teacher=teacher_merged,
            span_weight=torch.tensor(weights, dtype=torch.float32, device=device),
            uld_weight=self.uld_weight,
            unaligned=sum(n for _, _, n in retokenized),
        )
