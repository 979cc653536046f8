"""The LLM judge: an OpenAI-compatible chat endpoint or a local Hugging Face model, when configured.

It names which of two traits a reply shows (revealed preferences) and rates coherence 1–10. The API key
is read from the environment variable named by ``eval.llm_judge.api_key_env`` at call time; it is never
stored in the config, logged or written anywhere, and sent over plain http only to this machine unless
``eval.llm_judge.allow_insecure_http=true``. With ``eval.llm_judge.kind=none`` (the default) there is no LLM
judge and the suites that need one report themselves as skipped.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Callable

from charlit.loggers import redact_text
from charlit.transport import check_key_transport

SKIPPED = "skipped: no LLM judge configured"
KINDS = ("none", "openai", "hf")


class LLMJudge:
    def __init__(self, complete: Callable[[str], str], description: str):
        self.complete, self.description = complete, description

    def name_trait(self, question: str, reply: str, traits: tuple[str, str]) -> int | None:
        """0 or 1: which of ``traits`` the reply shows; None when the judge's answer does not say."""
        answer = self.complete(
            "Here is a question and a reply.\n\n"
            f"Question: {question}\n\nReply: {reply}\n\n"
            f"Which description fits the style of the reply better?\n1: {traits[0]}\n2: {traits[1]}\n"
            "Answer with the single digit 1 or 2 and nothing else."
        )
        match = re.search(r"[12]", answer)
        return int(match.group()) - 1 if match else None

    def coherence(self, question: str, reply: str) -> float | None:
        """Coherence on a 0–1 scale (the judge's 1–10 rating divided by 10); None when unparseable."""
        answer = self.complete(
            "Rate how coherent, fluent and on-topic this reply is, from 1 (gibberish) to 10 (perfectly coherent).\n\n"
            f"Question: {question}\n\nReply: {reply}\n\nAnswer with a single integer from 1 to 10 and nothing else."
        )
        match = re.search(r"\d+", answer)
        if not match or not 1 <= int(match.group()) <= 10:
            return None
        return int(match.group()) / 10


def openai_completion(
    base_url: str, model: str, api_key_env: str | None, timeout_s: float = 60, allow_insecure_http: bool = False
) -> Callable[[str], str]:
    """``prompt -> text`` through ``POST {base_url}/chat/completions`` (temperature 0)."""
    check_key_transport(base_url, api_key_env, allow_insecure_http)
    url = base_url.rstrip("/") + "/chat/completions"

    def complete(prompt: str) -> str:
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(
                    f"eval.llm_judge.api_key_env={api_key_env!r} names an environment variable that is not set; "
                    f"export it or set eval.llm_judge.api_key_env=null for an endpoint without a key."
                )
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps(
            {"model": model, "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}
        ).encode()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    return complete


def hf_completion(name_or_path: str) -> Callable[[str], str]:
    """``prompt -> text`` with a local Hugging Face chat model (greedy, 8 new tokens)."""
    from omegaconf import OmegaConf

    from charlit.data.chat import render_prompt_ids
    from charlit.models import load_model

    loaded = load_model(OmegaConf.create({"name_or_path": name_or_path}), apply_lora=False)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer

    def complete(prompt: str) -> str:
        import torch

        ids = torch.tensor([render_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    return complete


def build_llm_judge(cfg) -> LLMJudge | None:
    """From ``eval.llm_judge`` (``kind``: none | openai | hf); None when no judge is configured."""
    kind = str(cfg.get("kind", "none")) if cfg is not None else "none"
    if kind == "none":
        return None
    if kind == "openai":
        if not cfg.get("base_url") or not cfg.get("model"):
            raise ValueError(
                "eval.llm_judge.kind=openai needs eval.llm_judge.base_url (e.g. https://api.openai.com/v1) "
                "and eval.llm_judge.model."
            )
        complete = openai_completion(
            str(cfg.base_url),
            str(cfg.model),
            cfg.get("api_key_env"),
            allow_insecure_http=bool(cfg.get("allow_insecure_http", False)),
        )
        return LLMJudge(complete, f"openai-compatible {cfg.model} at {redact_text(str(cfg.base_url))}")
    if kind == "hf":
        if not cfg.get("model"):
            raise ValueError("eval.llm_judge.kind=hf needs eval.llm_judge.model (a local Hugging Face directory).")
        return LLMJudge(hf_completion(str(cfg.model)), f"local {cfg.model}")
    raise ValueError(f"eval.llm_judge.kind={kind!r} is not valid; choose one of {', '.join(KINDS)}.")
