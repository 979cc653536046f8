"""Judges and benchmarks that measure whether the persona took hold."""
