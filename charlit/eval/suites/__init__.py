"""The benchmark suites, registered in :data:`SUITES`. Each takes a :class:`SuiteContext` and returns a
:class:`SuiteResult`."""

from charlit.eval.suites.base import SUITES, SuiteContext, SuiteResult

__all__ = ["SUITES", "SuiteContext", "SuiteResult"]
