"""Constitutions, prompt sets, chat construction and Lightning data modules."""
