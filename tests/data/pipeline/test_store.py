"""The cache store: keys, chunk seeds, atomic writes, and chunked runs that resume after an interruption."""

import json

import pytest

from charlit.data.pipeline.store import (
    COMPLETE,
    ChunkResult,
    StageDir,
    atomic_write_text,
    cache_key,
    chunk_seed,
    data_cache_root,
    run_chunks,
)


def test_cache_key_is_canonical_and_sensitive():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1, "b": [1, 2]}) != cache_key({"a": 1, "b": [2, 1]})
    assert cache_key({"a": 1}) != cache_key({"a": 1.5})


def test_chunk_seed_depends_only_on_its_inputs():
    import random

    first = chunk_seed(7, 3, "pairs")
    random.seed(123)
    assert chunk_seed(7, 3, "pairs") == first
    assert len({chunk_seed(7, i, "pairs") for i in range(50)}) == 50
    assert chunk_seed(8, 3, "pairs") != first and chunk_seed(7, 3, "reflection") != first


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_text(target, Boom())  # fh.write refuses a non-string: the temp file must vanish
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_cache_root_follows_env_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLIT_CACHE", str(tmp_path / "env"))
    assert data_cache_root(None) == tmp_path / "env" / "data"
    assert data_cache_root(str(tmp_path / "mine")) == tmp_path / "mine"


def _work(calls):
    def work(chunk, seed):
        calls.append(list(chunk))
        return [{"item": i, "value": (seed * 31 + i) % 1000} for i in chunk]

    return work


def test_interrupted_chunk_run_resumes_without_duplicates_or_gaps(tmp_path):
    items = list(range(10))
    full_calls = []
    full = run_chunks(StageDir(tmp_path / "a", "s", "p", {"k": 1}), items, 3, _work(full_calls), lambda: 0, 0, "t")

    store = StageDir(tmp_path / "b", "s", "p", {"k": 1})
    first_calls = []

    def stop_after_two(index):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_chunks(store, items, 3, _work(first_calls), lambda: 0, 0, "t", on_chunk=stop_after_two)
    assert first_calls == [[0, 1, 2], [3, 4, 5]]
    resumed_calls = []
    resumed = run_chunks(store, items, 3, _work(resumed_calls), lambda: 0, 0, "t")
    assert resumed_calls == [[6, 7, 8], [9]]  # finished chunks are read back, not redone
    rows = [r for c in resumed for r in c.rows]
    assert rows == [r for c in full for r in c.rows]
    assert [r["item"] for r in rows] == items


def test_finish_writes_marker_last_and_is_complete(tmp_path):
    store = StageDir(tmp_path, "s", "p", {"k": 2})
    assert not store.is_complete()
    store.write_chunk(0, ChunkResult(rows=[{"x": 1}], new_tokens=3, seconds=0.5))
    assert not store.is_complete()
    store.finish([{"x": 1}], {"rows": 1}, "# card")
    assert store.is_complete()
    assert json.loads((store.path / COMPLETE).read_text())["rows"] == 1
    assert store.data_path.read_text() == '{"x": 1}\n'
    assert json.loads((store.path / "key.json").read_text()) == {"k": 2}
