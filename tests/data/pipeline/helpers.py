"""Composed configs for fast tiny-model pipeline runs (permissive filters: the random tiny model never ends a turn)."""

from tests.conftest import compose

FAST = [
    "model=tiny",
    "generation.max_new_tokens=6",
    "generation.batch_size=4",
    "generation.chunk_size=4",
    "generation.filters.unfinished=keep",
    "generation.filters.min_tokens=1",
]


def tiny_cfg(tmp_path, data, *overrides):
    return compose([f"data={data}", *FAST, f"generation.cache_dir={tmp_path / 'cache'}", *overrides])
