"""Constitutions, prompt sets, data files (``io``), chat construction and the Lightning data modules (``modules``)."""
