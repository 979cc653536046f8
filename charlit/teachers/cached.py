"""The cached teacher (``teacher=cached``): top-k log-probs a teacher wrote once, offline, with no teacher network in
the training process.

``python generate.py data=teacher_cache teacher=<any teacher>`` scores every assistant turn of a conversations
dataset and stores, per response token, the teacher's top-k ids and log-probs and the log of the mass left outside
them (:mod:`charlit.teachers.topk_cache`). ``teacher=cached teacher.path=<that directory>`` then serves those rows to
``method=distill`` on the same data; the divergence is the top-k + tail one of
:func:`charlit.kernels.fused_linear_topk_divergence` (exact on the k+1 buckets, a lower bound of the full-vocabulary
divergence; its measured error: docs/teachers.md). It can only score responses it was built on: on-policy samples
are refused with an error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charlit.models.heads import lm_head
from charlit.settings import setting
from charlit.teachers.base import TEACHERS, Teacher, TopKTeacherOutput
from charlit.teachers.topk_cache import TopKRows, example_key, read_cache


@TEACHERS.register("cached")
class CachedTeacher(Teacher):
    @dataclass
    class Config:
        path: str | None = setting(
            None, help="the teacher cache directory `python generate.py data=teacher_cache` printed"
        )

    @classmethod
    def from_config(cls, config, policy, reference, tokenizer, constitution, **weights) -> CachedTeacher:
        if not config.path:
            raise ValueError(
                "teacher=cached needs teacher.path=<cache dir>: build the cache with `python generate.py "
                "data=teacher_cache teacher=<the teacher>` and pass the directory it prints."
            )
        rows = read_cache(config.path, tokenizer, lm_head(policy).weight.shape[0])
        return cls(policy, reference, tokenizer, constitution, rows)

    def __init__(self, policy, reference, tokenizer, constitution, rows: TopKRows):
        super().__init__(policy, reference, tokenizer, constitution)
        self.rows = rows

    def score(self, prompts, responses) -> TopKTeacherOutput:
        spans = []
        for prompt, response in zip(prompts, responses):
            span = self.rows.where.get(example_key(prompt, response))
            if span is None or span[1] != len(response):
                raise ValueError(
                    f"teacher=cached has no rows for a response of {len(response)} tokens in this batch: the cache "
                    f"({self.rows.card.get('examples')} examples of data={self.rows.card.get('source')}) only scores "
                    f"the responses it was built on. Train method=distill on that data (on-policy samples need a "
                    f"teacher network), or rebuild the cache for this data."
                )
            spans.append(span)
        index = torch.cat([torch.arange(start, start + length) for start, length in spans])
        device = self.policy.device if hasattr(self.policy, "device") else index.device
        return TopKTeacherOutput(
            ids=self.rows.ids[index].to(device),
            logprobs=self.rows.logprobs[index].to(device),
            tail=self.rows.tail[index].to(device),
        )
