"""Pluggable judges (:data:`JUDGES`): ``likelihood`` and ``classifier`` score persona strength offline; an LLM
judge (:mod:`charlit.eval.judges.llm`) names traits and rates coherence when one is configured."""

from charlit.eval.judges.base import JUDGES, PersonaJudge, Reply, build_judge

__all__ = ["JUDGES", "PersonaJudge", "Reply", "build_judge"]
