"""The persona-vector judge: how far a reply's activations lie along the persona's direction in the base model,
after Chen et al. 2025 ("Persona vectors").

For a persona and base model, the direction at layer ``l`` is the mean residual-stream activation (the hidden state
after block ``l``, averaged over the reply's tokens) of the base model's constitution-prompted replies minus the
mean of its bare replies, both read by the base model with the bare prompt (no constitution) in context. The
replies are the bundled judge data (``charlit/eval/data/judge_replies.jsonl``: the default model prompted with each
shipped constitution, and bare; :mod:`charlit.eval.build_judge_data`), ``train`` split. A reply's score is the
projection of its mean activation on the unit direction, under the **base** model whatever system wrote the reply,
so it measures the text, not the weights being trained.

The layer is chosen by held-out separation inside the train split: two folds, each fitting the direction on one
half and measuring Cohen's d (prompted vs bare projections) on the other; the layer with the best mean d wins
(ties: the earlier layer). The ``heldout`` split stays untouched for validation (docs/evaluation.md). Activations of
the bundled replies are computed once per base model and cached with the directions and the chosen layer
(``$CHARLIT_CACHE/judges/persona-vectors-<key>.safetensors`` + ``.json``, keyed by the data and a fingerprint of the
model's weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from charlit.data.chat import render_prompt_ids, student_messages
from charlit.data.constitution import Constitution
from charlit.data.io import read_jsonl
from charlit.eval.build_judge_data import BARE, DATA_PATH
from charlit.eval.judges.base import JUDGES, PersonaJudge, Reply
from charlit.models.bundled import cache_root
from charlit.models.sequences import right_pad


@torch.no_grad()
def reply_activations(model, tokenizer, prompts: list, replies: list[list[int]], batch_size: int = 8) -> torch.Tensor:
    """``[n, layers + 1, H]``: each reply's mean hidden state per layer (embeddings first), the bare prompt in
    context; an empty reply is all zeros."""
    device = next(model.parameters()).device
    out = []
    for at in range(0, len(prompts), batch_size):
        contexts = [render_prompt_ids(tokenizer, student_messages(p)) for p in prompts[at : at + batch_size]]
        chunk = replies[at : at + batch_size]
        ids, attention = right_pad([c + r for c, r in zip(contexts, chunk)], tokenizer.pad_token_id)
        hidden = model(
            input_ids=ids.to(device), attention_mask=attention.to(device), output_hidden_states=True
        ).hidden_states
        stacked = torch.stack(hidden, dim=1).float()  # [b, layers + 1, T, H]
        mask = torch.zeros(stacked.shape[0], stacked.shape[2], device=device)
        for row, (context, reply) in enumerate(zip(contexts, chunk)):
            mask[row, len(context) : len(context) + len(reply)] = 1.0
        sums = torch.einsum("blth,bt->blh", stacked, mask)
        out.append((sums / mask.sum(dim=1).clamp(min=1)[:, None, None]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def cohens_d(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per column: (mean pos − mean neg) / pooled standard deviation."""
    pooled = ((pos.var(dim=0, unbiased=True) + neg.var(dim=0, unbiased=True)) / 2).sqrt().clamp(min=1e-12)
    return (pos.mean(dim=0) - neg.mean(dim=0)) / pooled


def directions(prompted: torch.Tensor, bare: torch.Tensor) -> torch.Tensor:
    """Unit mean-difference directions per layer, ``[layers + 1, H]``."""
    diff = prompted.mean(dim=0) - bare.mean(dim=0)
    return diff / diff.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def choose_layer(prompted: torch.Tensor, bare: torch.Tensor) -> tuple[int, list[float]]:
    """The layer whose direction, fitted on one half, best separates the other half (mean d over two folds); the
    embeddings (layer 0) are never chosen: they see tokens, not the reply's context."""
    halves = [(slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))]
    scores = torch.zeros(prompted.shape[1])
    for fit, held in halves:
        unit = directions(prompted[fit], bare[fit])
        pos = torch.einsum("nlh,lh->nl", prompted[held], unit)
        neg = torch.einsum("nlh,lh->nl", bare[held], unit)
        scores += cohens_d(pos, neg) / len(halves)
    scores[0] = -float("inf")
    return int(scores.argmax()), [round(float(s), 4) for s in scores]


def _model_fingerprint(model) -> str:
    """A hash of the model's config and of samples of its base weights (LoRA adapters left out: the frozen base of
    a LoRA run is the same network whatever its adapters hold)."""
    config = getattr(model, "config", None)
    digest = hashlib.sha256(json.dumps(config.to_dict() if config else {}, sort_keys=True, default=str).encode())
    base = [p for name, p in model.named_parameters() if "lora_" not in name]
    for param in base[:: max(1, len(base) // 8)]:
        digest.update(param.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


class PersonaVectors:
    """The bundled replies' activations under one base model, and each persona's direction and layer."""

    def __init__(self, activations: torch.Tensor, rows: list[dict]):
        self.activations, self.rows = activations, rows

    @classmethod
    def load_or_build(cls, model, tokenizer, data_path: Path = DATA_PATH, batch_size: int = 8) -> PersonaVectors:
        rows = [r for r in read_jsonl(data_path) if r.get("split") in ("train", "heldout")]
        key = hashlib.sha256(Path(data_path).read_bytes() + _model_fingerprint(model).encode()).hexdigest()[:20]
        path = cache_root() / "judges" / f"persona-vectors-{key}.safetensors"
        if path.is_file():
            activations = load_file(str(path))["activations"]
            if activations.shape[0] == len(rows):
                return cls(activations, rows)
        ids = [tokenizer(r["reply"], add_special_tokens=False)["input_ids"] for r in rows]
        activations = reply_activations(model, tokenizer, [r["prompt"] for r in rows], ids, batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"activations": activations.contiguous()}, str(tmp))
        tmp.replace(path)
        return cls(activations, rows)

    def personas(self) -> list[str]:
        return sorted({r["persona"] for r in self.rows} - {BARE})

    def _select(self, persona: str, split: str) -> torch.Tensor:
        index = [i for i, r in enumerate(self.rows) if r["persona"] == persona and r["split"] == split]
        return self.activations[index]

    def fit(self, persona: str) -> dict:
        """``{"layer", "direction", "separation"}`` from the train split."""
        prompted, bare = self._select(persona, "train"), self._select(BARE, "train")
        layer, separation = choose_layer(prompted, bare)
        return {"layer": layer, "direction": directions(prompted, bare)[layer], "separation": separation}

    def heldout(self, persona: str) -> torch.Tensor:
        return self._select(persona, "heldout")


@JUDGES.register("persona_vector")
class PersonaVectorJudge(PersonaJudge):
    name = "persona_vector"

    def __init__(self, *, base_model, tokenizer, batch_size: int = 8, vectors: PersonaVectors | None = None, **_):
        self.model, self.tokenizer, self.batch_size = base_model, tokenizer, batch_size
        self.vectors = vectors or PersonaVectors.load_or_build(base_model, tokenizer, batch_size=batch_size)
        self._fits: dict[str, dict] = {}

    def knows(self, constitution: Constitution) -> bool:
        return constitution.name in self.vectors.personas()

    def fitted(self, constitution: Constitution) -> dict:
        if not self.knows(constitution):
            raise ValueError(
                f"The persona-vector judge has bundled replies for {', '.join(self.vectors.personas())}, not "
                f"{constitution.name!r}: drop `persona_vector` from eval.judges for this persona."
            )
        if constitution.name not in self._fits:
            self._fits[constitution.name] = self.vectors.fit(constitution.name)
        return self._fits[constitution.name]

    def score(self, replies: list[Reply], constitution: Constitution) -> list[float]:
        """Each reply's mean activation at the persona's layer, projected on its unit direction."""
        fit = self.fitted(constitution)
        if not replies:
            return []
        acts = reply_activations(
            self.model, self.tokenizer, [r.prompt for r in replies], [list(r.ids) for r in replies], self.batch_size
        )
        return (acts[:, fit["layer"]] @ fit["direction"]).tolist()


def validate(vectors: PersonaVectors) -> list[dict]:
    """Per persona, on the ``heldout`` split: the chosen layer, its train-fold separation, the held-out Cohen's d of
    prompted vs bare projections, and the margin of the persona's own replies over the other personas' replies on
    its direction (mean projection, own minus others)."""
    out = []
    personas = vectors.personas()
    bare = vectors.heldout(BARE)
    for persona in personas:
        fit = vectors.fit(persona)
        layer, unit = fit["layer"], fit["direction"]
        own = vectors.heldout(persona)[:, layer] @ unit
        others = torch.cat([vectors.heldout(p)[:, layer] @ unit for p in personas if p != persona])
        out.append(
            {
                "persona": persona,
                "layer": layer,
                "train_separation": fit["separation"][layer],
                "heldout_d": float(cohens_d(own[:, None], (bare[:, layer] @ unit)[:, None])[0]),
                "prompted_above_bare": float(own.mean() - (bare[:, layer] @ unit).mean()),
                "own_above_others": float(own.mean() - others.mean()),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m charlit.eval.judges.persona_vector [--model M]``: the validation table as markdown."""
    import argparse

    from omegaconf import OmegaConf

    from charlit.machine import describe_cpu
    from charlit.models import load_model

    parser = argparse.ArgumentParser(description="Validate the persona-vector judge on the bundled held-out replies.")
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    args = parser.parse_args(argv)
    loaded = load_model(OmegaConf.create({"name_or_path": args.model}), apply_lora=False)
    vectors = PersonaVectors.load_or_build(loaded.model.eval(), loaded.tokenizer)
    rows = validate(vectors)
    print(f"Persona vectors of {args.model} on the bundled held-out replies ({describe_cpu()}).\n")
    print("| persona | layer | train-fold d | held-out d (prompted vs bare) | prompted − bare | own − other personas |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['persona']} | {r['layer']} | {r['train_separation']:.2f} | {r['heldout_d']:.2f} | "
            f"{r['prompted_above_bare']:.3f} | {r['own_above_others']:.3f} |"
        )


if __name__ == "__main__":
    main()
