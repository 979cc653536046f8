"""The served teacher (``teacher=served``): a teacher behind an OpenAI-compatible completions endpoint, for a teacher
too big to sit beside the student (vLLM on other GPUs, or ``python -m charlit.teachers.logprob_server``).

Per batch it sends the teacher's rendering of each prompt (the constitution as system prompt unless
``teacher.use_constitution=false``) followed by the student's response tokens, as token ids, to
``POST {base_url}/completions`` with ``prompt_logprobs=k`` and ``max_tokens=1`` — the request vLLM's server answers
with, per prompt position, the top-k next-token log-probs as ``{token id: {"logprob": x, "rank": r}}``. At each
response position it keeps the k entries of rank 1..k and the log of the mass outside them
(:class:`~charlit.teachers.base.TopKTeacherOutput`), so any method that learns from a teacher's distribution
(``on_policy_distill``, ``self_distill``, ``distill``) trains through
:func:`charlit.kernels.fused_linear_topk_divergence`. The served model must use the student's token ids (same
tokenizer family); ids outside the student's vocabulary are refused.

Requests carry ``teacher.batch_size`` sequences, are retried with exponential back-off on connection errors,
timeouts, 429 and 5xx (``teacher.retries``), and fail with one line naming the URL (credentials redacted) and
what to check. The API key is read from the environment variable ``teacher.api_key_env`` at call time and only
ever put in the ``Authorization`` header: never in the config, logs or errors; plain http carries it only to
this machine unless ``teacher.allow_insecure_http=true``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.loggers import redact_text
from charlit.settings import setting
from charlit.teachers.base import TEACHERS, Teacher, TopKTeacherOutput
from charlit.transport import check_key_transport

RETRIED_STATUS = (408, 429, 500, 502, 503, 504)
MIN_TAIL = -30.0
"""The log tail mass floor: rounding can make k log-probs sum to 1 although the teacher has mass elsewhere."""


class ServedTeacherError(RuntimeError):
    """The endpoint could not be reached or did not answer as the protocol says."""


@TEACHERS.register("served")
class ServedTeacher(Teacher):
    @dataclass
    class Config:
        base_url: str = setting(help="the OpenAI-compatible API root, e.g. http://gpu-node:8000/v1")
        model: str = setting(help="the served model's name (vLLM: the --served-model-name or the model path)")
        k: int = setting(20, gt=0, help="top-k log-probs per position (vLLM caps it at its --max-logprobs, 20)")
        batch_size: int = setting(8, gt=0, help="sequences per request")
        timeout_s: float = setting(120.0, gt=0, help="seconds before one request counts as failed")
        retries: int = setting(4, ge=0, help="extra attempts after a failed request, with exponential back-off")
        backoff_s: float = setting(1.0, ge=0, help="the first back-off; doubled after each failed attempt")
        api_key_env: str | None = setting(None, help="environment variable holding the API key; null = no key")
        allow_insecure_http: bool = setting(False, help="send the key over plain http to another machine")
        use_constitution: bool = setting(True, help="the constitution as the teacher's system prompt")

    @classmethod
    def from_config(cls, config, policy, reference, tokenizer, constitution, **weights) -> ServedTeacher:
        check_key_transport(config.base_url, config.api_key_env, config.allow_insecure_http, prefix="teacher")
        return cls(policy, reference, tokenizer, constitution, config)

    def __init__(self, policy, reference, tokenizer, constitution, config):
        super().__init__(policy, reference, tokenizer, constitution)
        self.config = config
        self.url = config.base_url.rstrip("/") + "/completions"

    def context_ids(self, prompt) -> list[int]:
        messages = (
            teacher_messages(prompt, self.constitution) if self.config.use_constitution else student_messages(prompt)
        )
        return render_prompt_ids(self.tokenizer, messages)

    def score(self, prompts, responses) -> TopKTeacherOutput:
        contexts = [self.context_ids(p) for p in prompts]
        rows = []
        size = self.config.batch_size
        for at in range(0, len(contexts), size):
            batch = list(zip(contexts[at : at + size], responses[at : at + size]))
            answer = self._post([list(c) + list(r) for c, r in batch])
            choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != len(batch):
                raise ServedTeacherError(
                    f"teacher=served: {self._where()} answered {len(choices)} choices for {len(batch)} prompts."
                )
            for (context, response), choice in zip(batch, choices):
                rows.append(self._rows(choice, len(context), len(response)))
        vocab = self.policy.get_output_embeddings().weight.shape[0]
        ids = torch.cat([r[0] for r in rows])
        if len(ids) and int(ids.max()) >= vocab:
            raise ServedTeacherError(
                f"teacher=served: {self._where()} returned token id {int(ids.max())}, outside the student's vocabulary "
                f"of {vocab}: the served model must use the student's tokenizer."
            )
        device = next(self.policy.parameters()).device
        return TopKTeacherOutput(
            ids=ids.to(device),
            logprobs=torch.cat([r[1] for r in rows]).to(device),
            tail=torch.cat([r[2] for r in rows]).to(device),
        )

    def _rows(self, choice: dict, context: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top-k rows of the ``length`` response positions of one choice (after ``context`` prompt tokens)."""
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) < context + length:
            got = len(entries) if isinstance(entries, list) else entries
            raise ServedTeacherError(
                f"teacher=served: {self._where()} returned prompt_logprobs of length {got!r} for a prompt of "
                f"{context + length} tokens; the endpoint must support vLLM's prompt_logprobs (vLLM >= 0.4, or "
                f"python -m charlit.teachers.logprob_server)."
            )
        k = self.config.k
        ids, logprobs = [], []
        for position in range(context, context + length):
            entry = entries[position] or {}
            top = sorted(((int(v["rank"]), int(t), float(v["logprob"])) for t, v in entry.items()), key=lambda e: e[0])
            top = [e for e in top if e[0] <= k][:k]
            if len(top) < k:
                raise ServedTeacherError(
                    f"teacher=served: {self._where()} returned {len(top)} log-probs at a position where teacher.k={k} "
                    f"were asked for; lower teacher.k or raise the server's limit (vLLM: --max-logprobs)."
                )
            ids.append([t for _, t, _ in top])
            logprobs.append([lp for _, _, lp in top])
        logprobs_t = torch.tensor(logprobs, dtype=torch.float64).reshape(length, k)
        inside = torch.logsumexp(logprobs_t, dim=-1).clamp(max=0.0)
        tail = torch.log(-torch.expm1(inside)).clamp(min=MIN_TAIL)
        return torch.tensor(ids, dtype=torch.long).reshape(length, k), logprobs_t.float(), tail.float()

    def _where(self) -> str:
        return redact_text(self.url)

    def _post(self, prompts: list[list[int]]) -> dict:
        """One batched request, retried with exponential back-off; the parsed JSON answer."""
        config = self.config
        body = json.dumps(
            {
                "model": config.model,
                "prompt": prompts,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": config.k,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(
                    f"teacher.api_key_env={config.api_key_env!r} names an environment variable that is not set; "
                    f"export it, or set teacher.api_key_env=null for an endpoint without a key."
                )
            headers["Authorization"] = f"Bearer {key}"
        delay, last = config.backoff_s, ""
        for attempt in range(config.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code not in RETRIED_STATUS:
                    detail = err.read()[:300].decode(errors="replace")
                    raise ServedTeacherError(
                        f"teacher=served: {self._where()} answered HTTP {err.code} ({redact_text(detail)}); check "
                        f"teacher.model={config.model!r} and that the server supports prompt_logprobs."
                    ) from None
                last = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = "timed out" if isinstance(reason, TimeoutError) else f"{type(reason).__name__}: {reason}"
            except json.JSONDecodeError:
                raise ServedTeacherError(f"teacher=served: {self._where()} did not answer JSON.") from None
            if attempt < config.retries:
                time.sleep(delay)
                delay *= 2
        raise ServedTeacherError(
            f"teacher=served: {self._where()} failed {config.retries + 1} times (last: {redact_text(str(last))}; "
            f"timeout {config.timeout_s:g} s each); check that the server is up and teacher.base_url, or raise "
            f"teacher.timeout_s / teacher.retries."
        )
