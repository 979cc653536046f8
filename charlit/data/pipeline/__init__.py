"""The character data pipeline: cached, resumable generation stages (prompts → pairs; reflection, interaction).

``generate_dataset(cfg)`` makes (or reuses) the dataset a ``data`` variant describes; ``prepare_data(cfg)``
is what training calls first. See ``charlit/data/pipeline/store.py`` for the cache layout.
"""

from charlit.data.pipeline.dataset import Dataset, generate_dataset, needs_generation, prepare_data

__all__ = ["Dataset", "generate_dataset", "needs_generation", "prepare_data"]
