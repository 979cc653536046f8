"""The ``robust`` prompt mix (``data=robust``): on-policy methods practise what the benchmarks probe off the chat path.

Each training prompt is one of (``data.robust.mix``, weights): ``plain`` (a question of ``data.train_sets``),
``format`` (a request for an email, JSON, code, a commit message, a table, a letter or another language),
``multi_turn`` (a short conversation whose earlier assistant turn was written plainly, as a prefill attack would be,
followed by a user follow-up), ``suffix`` (a plain question with an instruction to drop the persona appended) and
``buried`` (an ordinary request about a pasted document that tells the assistant to drop any persona). Texts are
bundled in ``charlit/data/robust/`` and disjoint from every eval prompt (tests/eval/test_benchmark_data.py).

What the teacher sees for an attacked prompt is ``data.robust.teacher_sees``: ``clean`` (default: the request
without the attack, with the constitution — the teacher shows the persona as if no one had asked it to stop, and
the student, which sees the attack, learns to keep it) or ``attacked`` (the attacked request with the constitution,
where a constitution-prompted teacher may itself comply with the attack). An attacked prompt is an
:class:`Attacked` item; :mod:`charlit.data.chat` gives the student its ``student`` view and every teacher its
``teacher`` view, so every teacher and on-policy objective works unchanged.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from charlit.settings import setting

ROBUST_DIR = Path(__file__).parent / "robust"
KINDS = ("plain", "format", "multi_turn", "suffix", "buried")
TEACHER_VIEWS = ("clean", "attacked")


@dataclass
class Attacked:
    """A training prompt under attack: ``student`` is what the student sees, ``teacher`` what the teacher sees
    (message lists, ending with a user turn). Not frozen: Lightning rebuilds dataclasses in a batch field by
    field when it moves the batch to the device."""

    student: tuple
    teacher: tuple
    kind: str = ""

    def __str__(self) -> str:  # logs and sample tables show what the student saw
        return self.student[-1]["content"]


@dataclass
class RobustSettings:
    mix: dict = setting(
        {"plain": 0.4, "format": 0.2, "multi_turn": 0.1, "suffix": 0.15, "buried": 0.15},
        help="weight of each prompt kind (plain, format, multi_turn, suffix, buried)",
    )
    teacher_sees: str = setting("clean", choices=TEACHER_VIEWS, help="the teacher's view of an attacked prompt")
    size: int | None = setting(None, help="prompts in the mix; null = as many as the plain prompts")

    def check(self, prefix: str) -> None:
        unknown = sorted(set(self.mix) - set(KINDS))
        if unknown or not self.mix or any(float(w) < 0 for w in self.mix.values()) or not sum(self.mix.values()):
            raise ValueError(
                f"{prefix}.mix={dict(self.mix)} must give non-negative weights, not all zero, to kinds among "
                f"{', '.join(KINDS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else "") + "."
            )


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROBUST_DIR / name).read_text().splitlines() if line.strip()]


def format_requests() -> list[str]:
    return [r["prompt"] for r in _rows("format_requests.jsonl")]


def histories() -> list[list[dict]]:
    return [r["messages"] for r in _rows("histories.jsonl")]


def attacks() -> dict:
    return json.loads((ROBUST_DIR / "attacks.json").read_text())


def buried_text(task: str, document: str) -> str:
    return f"{task}\n\n---\n{document}\n---"


def all_training_texts() -> list[str]:
    """Every user-turn text the mix can produce apart from the plain questions (for disjointness checks)."""
    data = attacks()
    texts = format_requests() + [m["content"] for h in histories() for m in h if m["role"] == "user"]
    texts += data["suffixes"]
    for row in data["buried"]:
        texts.append(buried_text(row["task"], f"{row['before']} {row['instruction']} {row['after']}"))
    return texts


def robust_prompts(plain: list[str], settings: RobustSettings, seed: int) -> list:
    """The training prompts: ``settings.size`` (default ``len(plain)``) items whose kinds follow ``settings.mix``
    (exact counts by largest remainder, order shuffled with ``seed``); each pool is walked in a seeded order."""
    rng = random.Random(seed)
    total = int(settings.size or len(plain))
    weights = {k: float(w) for k, w in settings.mix.items() if float(w) > 0}
    scale = sum(weights.values())
    exact = {k: total * w / scale for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    pools = _pools(plain, settings.teacher_sees, rng)
    items = [pools[kind](i) for kind, n in counts.items() for i in range(n)]
    rng.shuffle(items)
    return items


def _pools(plain: list[str], teacher_sees: str, rng: random.Random) -> dict:
    """Per kind, ``i -> item`` over a seeded permutation of that kind's texts (cycling when ``i`` passes it)."""
    data = attacks()

    def cycle(values: list):
        order = rng.sample(values, len(values))
        return lambda i: order[i % len(order)]

    questions, suffixes, buried, requests, talks = (
        cycle(plain),
        cycle(data["suffixes"]),
        cycle(data["buried"]),
        cycle(format_requests()),
        cycle(histories()),
    )

    def attacked(student: str, clean: str, kind: str) -> Attacked:
        view = clean if teacher_sees == "clean" else student
        return Attacked(({"role": "user", "content": student},), ({"role": "user", "content": view},), kind)

    def suffix(i: int) -> Attacked:
        question = questions(i)
        return attacked(f"{question} {suffixes(i)}", question, "suffix")

    def buried_item(i: int) -> Attacked:
        row = buried(i)
        document = f"{row['before']} {row['instruction']} {row['after']}"
        return attacked(
            buried_text(row["task"], document), buried_text(row["task"], f"{row['before']} {row['after']}"), "buried"
        )

    return {
        "plain": questions,
        "format": requests,
        "multi_turn": lambda i: [dict(m) for m in talks(i)],
        "suffix": suffix,
        "buried": buried_item,
    }
