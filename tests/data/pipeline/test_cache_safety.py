"""The dataset cache against hostile names and concurrent runs: nothing is written outside the cache, a planted
directory outside it is never read, and two runs of one dataset generate it once."""

import threading
import time

import pytest
from omegaconf import OmegaConf

from charlit.data.constitution import ConstitutionError
from charlit.data.pipeline import generate_dataset
from charlit.data.pipeline.store import COMPLETE, StageDir, cache_key, run_chunks
from charlit.paths import UnsafePathError
from tests.data.pipeline.helpers import tiny_cfg

SMALL = ["data.generate.prompts.num=8"]  # two chunks of 4


def _plant_dataset(directory):
    directory.mkdir(parents=True)
    (directory / "data.jsonl").write_text('{"planted": true}\n')
    (directory / COMPLETE).write_text("{}")


def test_persona_name_leading_out_of_the_cache_is_refused(tmp_path):
    work = tmp_path / "a" / "b" / "c"
    persona = tmp_path / "evil.yaml"
    persona.write_text('name: "../../../elsewhere/evil"\ntraits:\n  - trait: I am.\n    questions: [Why]\n')
    with pytest.raises(ConstitutionError, match="persona name '../../../elsewhere/evil' is not allowed"):
        generate_dataset(tiny_cfg(work, "pairs", *SMALL, f"persona={persona}"))
    assert [p.name for p in tmp_path.rglob("*")] == ["evil.yaml"]  # nothing written anywhere


@pytest.mark.parametrize("stage, persona", [("pairs", "../../elsewhere/evil"), ("pairs", "/tmp/evil"), ("../x", "p")])
def test_stage_dir_refuses_names_leading_out_of_the_cache(tmp_path, stage, persona):
    with pytest.raises(UnsafePathError, match="leads outside"):
        StageDir(tmp_path / "cache", stage, persona, {"k": 1})


def test_a_dataset_planted_outside_the_cache_is_never_read(tmp_path):
    planted = tmp_path / "elsewhere" / f"evil-{cache_key({'k': 1})}"
    _plant_dataset(planted)  # where ../../elsewhere/evil leads from cache/pairs/ (a stage other runs created)
    (tmp_path / "cache" / "pairs").mkdir(parents=True)
    with pytest.raises(UnsafePathError, match="stage/persona 'pairs/../../elsewhere/evil-.*' leads outside"):
        StageDir(tmp_path / "cache", "pairs", "../../elsewhere/evil", {"k": 1}).is_complete()


def test_data_name_leading_out_of_the_cache_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    from charlit.data.pipeline import dataset

    monkeypatch.setattr(dataset, "build_generator", lambda *a, **k: pytest.fail("a model was loaded"))
    cfg = tiny_cfg(tmp_path / "a" / "b", "introspection")
    OmegaConf.update(cfg, "data.name", "../../evil")  # as a data YAML could set it (the command line refuses it)
    with pytest.raises(UnsafePathError, match="data.name '../../evil' leads outside"):
        generate_dataset(cfg)


def _counting_work(calls, started=None, release=None):
    def work(chunk, seed):
        calls.append(list(chunk))
        if started is not None:
            started.set()
            release.wait(5)
        return [{"item": i} for i in chunk]

    return work


def test_a_second_chunk_run_waits_for_the_first_and_reuses_its_chunks(tmp_path, capsys):
    items, calls, started, release = list(range(8)), [], threading.Event(), threading.Event()
    first = threading.Thread(
        target=run_chunks,
        args=(StageDir(tmp_path, "s", "p", {"k": 1}), items, 4, _counting_work(calls, started, release), int, 0, "t"),
    )
    first.start()
    assert started.wait(5)
    waiter: list = []
    second = threading.Thread(
        target=lambda: waiter.append(
            run_chunks(StageDir(tmp_path, "s", "p", {"k": 1}), items, 4, _counting_work(calls), int, 0, "t")
        )
    )
    second.start()
    _wait_for(capsys, lambda out: "another process is generating" in out or len(calls) > 1)
    release.set()
    first.join(5)
    second.join(5)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7]]  # every chunk generated once, by the first run
    assert [r["item"] for c in waiter[0] for r in c.rows] == items


def _wait_for(capsys, done, timeout=5.0):
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += capsys.readouterr().out
        if done(seen):
            return seen
        time.sleep(0.02)
    return seen


def test_two_generate_runs_of_one_dataset_generate_it_once(tmp_path, capsys):
    quick = ["data.generate.prompts.num=2", "generation.chunk_size=1", "generation.max_new_tokens=2"]
    cfgs = {label: tiny_cfg(tmp_path, "pairs", *quick) for label in "ab"}
    generated, results, seen = [], {}, []

    def run(label):
        results[label] = generate_dataset(cfgs[label], on_chunk=lambda index: on_chunk(label, index))

    # The second run starts once the first is mid-dataset (its model built: threads that built the tiny model at
    # the same time would draw different random weights, hence a different dataset).
    second = threading.Thread(target=run, args=("b",))

    def on_chunk(label, index):
        generated.append((label, index))
        if (label, index) == ("a", 0):
            second.start()
            seen.append(_wait_for(capsys, lambda out: "waiting for it" in out or ("b", 1) in generated))

    run("a")
    second.join(20)
    assert generated == [("a", 0), ("a", 1)]
    assert "pairs: another process is generating" in seen[0]
    assert results["a"].path == results["b"].path and results["a"].card["rows"] == results["b"].card["rows"] == 2
