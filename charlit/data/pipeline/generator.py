"""A model that writes data: chat messages in, decoded replies (with their token counts and end status) out.

The generator's identity (model name, a hash of the weights actually loaded, the chat template) goes into
every cache key, so a different model or different weights always make a new dataset.
"""

from __future__ import annotations

import gc
import hashlib
import re
from dataclasses import dataclass

import torch

from charlit.compute import flops_per_token, param_counts
from charlit.data.chat import render_prompt_ids
from charlit.models import load_model
from charlit.quality import loop_span
from charlit.sampling import SamplingParams, build_sampler
from charlit.sampling.hf import end_token_ids

# A reply that writes the other side's turn: a chat-template marker, or a "User:"-style speaker label on its own line.
SPEAKER_LABEL = re.compile(r"(^|\n)\s*(user|assistant|human|ai|system)\s*:", re.IGNORECASE)


# Where a sentence ends: . ! ? or … (not after a digit, so "1." in a list does not count), then closing quotes or
# brackets, then whitespace or the end; or a line break.
SENTENCE_END = re.compile(r"(?<!\d)[.!?…][\"')\]]*(?=\s|$)|\n")


@dataclass(frozen=True)
class Reply:
    text: str  # the reply without its end-of-turn token, stripped
    n_tokens: int  # generated tokens, end-of-turn token included
    finished: bool  # ended with an end-of-turn token (not cut off at max_new_tokens)
    format_break: bool  # contains a chat-template marker or another speaker's label
    trimmed_text: str = ""  # unfinished replies: the text up to its last complete sentence ("" if none)
    trimmed_tokens: int = 0  # tokens of trimmed_text plus the end-of-turn token it gets when trained on
    was_trimmed: bool = False  # set by the filters when they kept trimmed_text in place of text
    loops: bool = False  # its token ids loop under charlit.quality's rule (the evaluation's gate)
    unlooped_text: str = ""  # looping replies: the text before the loop completes, to its last complete sentence
    unlooped_tokens: int = 0  # tokens of unlooped_text plus the end-of-turn token it gets when trained on
    was_cut: bool = False  # set by the filters when they kept unlooped_text in place of text

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "n_tokens": self.n_tokens,
            "finished": self.finished,
            "format_break": self.format_break,
            "trimmed_text": self.trimmed_text,
            "trimmed_tokens": self.trimmed_tokens,
            "loops": self.loops,
            "unlooped_text": self.unlooped_text,
            "unlooped_tokens": self.unlooped_tokens,
        }

    @staticmethod
    def from_dict(raw: dict) -> Reply:
        return Reply(
            text=raw["text"],
            n_tokens=int(raw["n_tokens"]),
            finished=bool(raw["finished"]),
            format_break=bool(raw["format_break"]),
            trimmed_text=raw.get("trimmed_text", ""),
            trimmed_tokens=int(raw.get("trimmed_tokens", 0)),
            loops=bool(raw.get("loops", False)),
            unlooped_text=raw.get("unlooped_text", ""),
            unlooped_tokens=int(raw.get("unlooped_tokens", 0)),
        )


def last_complete_sentences(text: str) -> str:
    """``text`` cut back to the end of its last complete sentence (or line), stripped; "" if it has none."""
    cut = 0
    for match in SENTENCE_END.finditer(text):
        end = match.start() if match.group() == "\n" else match.end()
        if text[:end].strip():
            cut = end
    return text[:cut].strip()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (name, dtype, shape and bytes), in name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def template_markers(tokenizer) -> list[str]:
    """Special-token strings that must never appear inside a reply (e.g. ``<|im_start|>``)."""
    return sorted(
        {t for t in tokenizer.all_special_tokens if t}
        | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content}
    )


class Generator:
    """Samples replies to message lists with the model of a ``model`` config, through the configured sampler."""

    def __init__(self, loaded, sampler, params: SamplingParams, role: str = "generator"):
        self.loaded = loaded
        self.model = loaded.model.requires_grad_(False)
        self.tokenizer = loaded.tokenizer
        self.sampler = sampler
        self.params = params
        self.role = role
        self.stop_ids = set(end_token_ids(self.tokenizer, self.model))
        self.markers = template_markers(self.tokenizer)
        self.new_tokens = 0
        self.flops = 0.0  # charlit.compute's rule: 2·N per prompt and generated token
        self.n_params = param_counts(self.model)[0]
        self.identity = {
            "name": loaded.name_or_path,
            "weights_sha256": weights_fingerprint(self.model),
            "chat_template_sha256": hashlib.sha256(str(self.tokenizer.chat_template).encode()).hexdigest(),
            "vocab": len(self.tokenizer),
        }

    def decode(self, ids: list[int]) -> Reply:
        finished = bool(ids) and ids[-1] in self.stop_ids
        body = ids[:-1] if finished else ids
        raw = self.tokenizer.decode(body, skip_special_tokens=False)
        broken = any(m in raw for m in self.markers) or bool(SPEAKER_LABEL.search(raw))
        trimmed = "" if finished else last_complete_sentences(raw)
        loop_at = loop_span(body)
        unlooped = "" if loop_at is None else last_complete_sentences(self.tokenizer.decode(body[:loop_at]))
        return Reply(
            text=raw.strip(),
            n_tokens=len(ids),
            finished=finished,
            format_break=broken,
            trimmed_text=trimmed,
            trimmed_tokens=self.trained_length(trimmed),
            loops=loop_at is not None,
            unlooped_text=unlooped,
            unlooped_tokens=self.trained_length(unlooped),
        )

    def trained_length(self, text: str) -> int:
        """Tokens of ``text`` plus the end-of-turn token it gets when trained on (0 for no text)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 if text else 0

    def reply(self, conversations: list[list[dict]], seed: int, desc: str | None = None) -> list[Reply]:
        """One sampled reply per conversation (each a message list ending with a user turn)."""
        if not conversations:
            return []
        prompts = [render_prompt_ids(self.tokenizer, messages) for messages in conversations]
        outputs = self.sampler.generate(self.model, prompts, self.params, seed=seed, desc=desc)
        new_tokens = sum(len(o) for o in outputs)
        self.new_tokens += new_tokens
        self.flops += flops_per_token(self.n_params) * (sum(len(p) for p in prompts) + new_tokens)
        return [self.decode(o) for o in outputs]

    def close(self) -> None:
        """Free the model (the data pipeline runs before training loads its own copy)."""
        self.model = self.loaded = None
        gc.collect()


def sampling_params(gen_cfg) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=int(gen_cfg.max_new_tokens),
        temperature=float(gen_cfg.temperature),
        top_p=float(gen_cfg.top_p),
        top_k=int(gen_cfg.top_k),
    )


def build_generator(model_cfg, sampler_cfg, gen_cfg, role: str = "generator") -> Generator:
    """Load ``model_cfg`` without LoRA (generation uses fixed weights) behind the ``sampler`` backend."""
    loaded = load_model(model_cfg, apply_lora=False)
    sampler_cfg = {**dict(sampler_cfg), "batch_size": int(gen_cfg.batch_size)}
    sampler = build_sampler(sampler_cfg, loaded.tokenizer)
    return Generator(loaded, sampler, sampling_params(gen_cfg), role=role)
