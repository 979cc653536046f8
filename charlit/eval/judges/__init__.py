"""Pluggable judges: ``likelihood`` and ``classifier`` score persona strength offline; an LLM judge
(:mod:`charlit.eval.judges.llm`) names traits and rates coherence when one is configured."""
from charlit.eval.judges.base import PersonaJudge, Reply, build_judge, judge_names, register_judge
from charlit.eval.judges import classifier, likelihood  # noqa: F401  (registers the bundled judges)

__all__ = ["PersonaJudge", "Reply", "build_judge", "judge_names", "register_judge"]
