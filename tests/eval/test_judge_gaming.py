"""Judge gaming: hand-made degenerate replies (``tests/eval/data/judge_gaming.json``) must not outscore a coherent
in-character reply once the coherence gate is applied, under every judge. The gate is charlit's
(:class:`charlit.quality.QualityGate`), fed as the suites feed it: the reply's fluency under the bare base, the
bare base's own reply as the fluency reference and the constitution as the text it must not recite. A reply that
fails the gate scores the bare reply's score (no gain).

Before the gate, each judge is fooled: the test also checks the raw scores, so ``docs/evaluation.md``'s account of
what fooled which judge stays true.
"""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from charlit.data.chat import render_prompt_ids, student_messages
from charlit.data.constitution import resolve_persona
from charlit.eval.judges import Reply, build_judge
from charlit.eval.judges.llm import LLMJudge
from charlit.eval.likelihood_judge import mean_reply_logprob
from charlit.quality import QualityGate, gated_scores, reply_quality

FIXTURES = json.loads((Path(__file__).parent / "data" / "judge_gaming.json").read_text())
GATED_KINDS = ("repeated_phrase", "keyword_list", "constitution_pasted")


@pytest.fixture(scope="module")
def base():
    from charlit.models import load_model

    loaded = load_model(OmegaConf.create({"name_or_path": "bundled:smollm2-135m-instruct"}), apply_lora=False)
    return loaded.model.eval(), loaded.tokenizer


@pytest.fixture(scope="module")
def cases(base):
    """Per case: the replies (bare, coherent, adversarial ones) and whether each passes the gate."""
    model, tokenizer = base
    constitution = resolve_persona(FIXTURES["persona"])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for case in FIXTURES["cases"]:
        texts = {"bare": case["bare"], "coherent": case["coherent"], **case["adversarial"]}
        replies = {}
        for kind, text in texts.items():
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            replies[kind] = Reply(case["prompt"], ids if kind == "cut_mid_word" else (*ids, end), text)
        context = render_prompt_ids(tokenizer, student_messages(case["prompt"]))
        with torch.no_grad():
            fluency = mean_reply_logprob(
                model, tokenizer, [context] * len(replies), [list(r.ids) for r in replies.values()]
            )
        fluency = dict(zip(replies, fluency.tolist()))
        source = constitution.system_prompt()
        coherent = {
            kind: reply_quality(r.ids, r.text, [end], QualityGate(), source, fluency[kind], fluency["bare"]).coherent
            for kind, r in replies.items()
        }
        out.append((replies, coherent))
    return constitution, out


def _gated(judge_scores: dict[str, float], coherent: dict[str, bool]) -> dict[str, float]:
    kinds = list(judge_scores)
    gated = gated_scores([judge_scores[k] for k in kinds], [coherent[k] for k in kinds], judge_scores["bare"])
    return dict(zip(kinds, gated))


def test_the_gate_fails_loops_keyword_lists_and_recited_constitution_but_not_the_coherent_replies(cases):
    _, all_cases = cases
    for _, coherent in all_cases:
        assert coherent["bare"] and coherent["coherent"]
        assert not any(coherent[kind] for kind in GATED_KINDS), coherent


# what fooled each judge before the gate (docs/evaluation.md, "Judge gaming")
FOOLED = {name: set(GATED_KINDS) for name in ("likelihood", "classifier", "persona_vector")}
JUDGE_NAMES = [
    "likelihood",
    "classifier",
    pytest.param("persona_vector", marks=pytest.mark.slow),  # ~3 min: the bundled replies' activations, once
]


@pytest.mark.parametrize("name", JUDGE_NAMES)
def test_no_degenerate_reply_outscores_the_coherent_one_once_gated(name, base, cases):
    model, tokenizer = base
    constitution, all_cases = cases
    judge = build_judge(name, base_model=model, tokenizer=tokenizer)
    fooled = set()
    for replies, coherent in all_cases:
        raw = dict(zip(replies, judge.score(list(replies.values()), constitution)))
        fooled |= {kind for kind in GATED_KINDS if raw[kind] > raw["coherent"]}
        gated = _gated(raw, coherent)
        for kind in GATED_KINDS:
            assert gated[kind] <= gated["coherent"], (name, kind, raw)
    assert fooled == FOOLED[name], fooled


def test_an_llm_trait_judge_that_counts_keywords_is_not_won_by_degenerate_text_once_gated(cases):
    """A gullible LLM judge names the persona's trait whenever a pirate word appears: every adversarial reply
    shows the trait raw; gated (the revealed-preference suite drops replies that fail the gate), none does."""
    _, all_cases = cases
    words = ("arr", "ahoy", "matey", "rum", "sea", "salty", "wheel")
    judge = LLMJudge(lambda prompt: "1" if any(w in prompt.split("Reply:")[1].lower() for w in words) else "2", "stub")
    for replies, coherent in all_cases:
        shown = {kind: judge.name_trait("q", r.text, ("pirate", "plain")) == 0 for kind, r in replies.items()}
        assert all(shown[kind] for kind in GATED_KINDS) and shown["coherent"]
        assert not any(shown[kind] and coherent[kind] for kind in GATED_KINDS)


@pytest.mark.xfail(
    strict=True,
    reason="known limit: a reply cut mid-word keeps its dense in-character opening, and "
    "per-token-mean judges score it above the full reply; the gate does not catch truncation",
)
@pytest.mark.parametrize("name", JUDGE_NAMES)
def test_a_reply_cut_mid_word_does_not_outscore_the_full_reply(name, base, cases):
    model, tokenizer = base
    constitution, all_cases = cases
    judge = build_judge(name, base_model=model, tokenizer=tokenizer)
    for replies, coherent in all_cases:
        gated = _gated(dict(zip(replies, judge.score(list(replies.values()), constitution))), coherent)
        assert gated["cut_mid_word"] <= gated["coherent"]
