"""The benchmark suites, in report order. Each takes a :class:`SuiteContext` and returns a :class:`SuiteResult`."""
from charlit.eval.suites.base import SuiteContext, SuiteResult
from charlit.eval.suites.capability import capability
from charlit.eval.suites.llm_judged import coherence, revealed_preferences
from charlit.eval.suites.multiturn import multiturn
from charlit.eval.suites.persona import ood, persona_id
from charlit.eval.suites.robustness import robustness

SUITES = {
    "persona_id": persona_id,
    "ood": ood,
    "multiturn": multiturn,
    "robustness": robustness,
    "revealed_preferences": revealed_preferences,
    "coherence": coherence,
    "capability": capability,
}

__all__ = ["SUITES", "SuiteContext", "SuiteResult"]
