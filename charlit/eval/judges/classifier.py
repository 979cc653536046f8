"""The classifier judge: which persona wrote a reply, from a sentence embedding.

A multinomial logistic regression (torch, seeded, L2-regularised, full-batch L-BFGS) over the bundled
MiniLM embeddings, trained on the bundled replies of the default model prompted with each shipped
constitution plus its bare replies (class ``bare``; see :mod:`charlit.eval.build_judge_data`). A reply's
score under a constitution is the log-odds of that persona's class against ``bare`` (like the likelihood
judge's gain: how much more the reply looks like the persona than like the unprompted model). The trained weights
are cached, keyed by the data and the embedding model.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from charlit.data.constitution import Constitution
from charlit.data.io import read_jsonl
from charlit.eval.build_judge_data import BARE, DATA_PATH
from charlit.eval.judges.base import JUDGES, PersonaJudge, Reply
from charlit.eval.judges.embedding import SentenceEmbedder, model_dir
from charlit.models.bundled import cache_root


def load_rows(split: str, path: Path = DATA_PATH) -> list[dict]:
    rows = [r for r in read_jsonl(path) if r.get("split") == split]
    if not rows:
        raise ValueError(
            f"{path} has no rows with split={split!r}; regenerate it with `python -m charlit.eval.build_judge_data`."
        )
    return rows


class PersonaClassifier:
    def __init__(self, embedder: SentenceEmbedder, classes: list[str], weight: torch.Tensor, bias: torch.Tensor):
        self.embedder, self.classes, self.weight, self.bias = embedder, classes, weight, bias

    @classmethod
    def fit(cls, embedder: SentenceEmbedder, texts: list[str], labels: list[str], l2: float = 1e-3, seed: int = 0):
        classes = sorted(set(labels))
        x = embedder.embed(texts)
        y = torch.tensor([classes.index(label) for label in labels])
        gen = torch.Generator().manual_seed(seed)
        weight = (0.01 * torch.randn(len(classes), x.shape[1], generator=gen)).requires_grad_()
        bias = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(embedder, classes, weight.detach(), bias.detach())

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), len(classes)]``."""
        return torch.softmax(self.embedder.embed(texts) @ self.weight.T + self.bias, dim=-1)

    def predict(self, texts: list[str]) -> list[str]:
        return [self.classes[i] for i in self.probabilities(texts).argmax(-1).tolist()]


def _cache_key(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update((model_dir() / "model.safetensors").stat().st_size.to_bytes(8, "little"))
    return digest.hexdigest()[:20]


def _load_cached(path: Path) -> dict:
    """The cached weights; ``weights_only`` unpickles tensors and plain containers only, never code."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds more than the classifier's tensors and class names, so charlit will not load it; "
            f"delete it and the classifier is fitted again."
        ) from err


def bundled_classifier(path: Path = DATA_PATH) -> PersonaClassifier:
    """The classifier trained on the bundled ``train`` split (cached after the first fit)."""
    embedder = SentenceEmbedder()
    cached = cache_root() / "judges" / f"persona-classifier-{_cache_key(path)}.pt"
    if cached.is_file():
        state = _load_cached(cached)
        return PersonaClassifier(embedder, state["classes"], state["weight"], state["bias"])
    rows = load_rows("train", path)
    classifier = PersonaClassifier.fit(embedder, [r["reply"] for r in rows], [r["persona"] for r in rows])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save({"classes": classifier.classes, "weight": classifier.weight, "bias": classifier.bias}, tmp)
    tmp.replace(cached)
    return classifier


@JUDGES.register("classifier")
class ClassifierJudge(PersonaJudge):
    name = "classifier"

    def __init__(self, *, classifier: PersonaClassifier | None = None, **_):
        self.classifier = classifier or bundled_classifier()

    def _column(self, constitution: Constitution) -> int:
        if constitution.name not in self.classifier.classes or constitution.name == BARE:
            known = [c for c in self.classifier.classes if c != BARE]
            raise ValueError(
                f"The classifier judge knows the personas {', '.join(known)}, not {constitution.name!r}: "
                f"drop `classifier` from eval.judges for this persona."
            )
        return self.classifier.classes.index(constitution.name)

    def score(self, replies: list[Reply], constitution: Constitution) -> list[float]:
        """Log-odds of the persona's class against ``bare``: ``log P(persona | reply) − log P(bare | reply)``."""
        column, bare = self._column(constitution), self.classifier.classes.index(BARE)
        if not replies:
            return []
        logp = self.classifier.probabilities([r.text for r in replies]).log()
        return (logp[:, column] - logp[:, bare]).tolist()

    def hits(self, replies: list[Reply], constitution: Constitution) -> list[bool]:
        """Whether the persona is the classifier's top class for each reply."""
        self._column(constitution)
        return [p == constitution.name for p in self.classifier.predict([r.text for r in replies])]

    def knows(self, constitution: Constitution) -> bool:
        return constitution.name in self.classifier.classes and constitution.name != BARE
