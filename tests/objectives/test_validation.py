"""Held-out validation's persona-vector figures (val.persona_vector): by hand, and in a tiny run."""

import pytest

from charlit.objectives.validation import Scored, ValidationTally
from charlit.run import train
from tests.conftest import compose


def test_persona_vector_progress_over_the_bare_to_prompted_range_raw_and_gated():
    tally = ValidationTally()
    tally.baseline_scores = {
        # bare: vectors 0 and 2 (mean 1); prompted: 5 and 9 (mean 7), the second fails the gate (loops) -> gated
        # prompted mean (5 + 1) / 2 = 3
        "bare": Scored([0.0, 0.0], [-1.0, -1.0], [True, True], [False, False], [0.0, 2.0]),
        "prompted": Scored([1.0, 1.0], [-1.0, -1.0], [True, False], [False, True], [5.0, 9.0]),
    }
    tally.student = Scored([0.5, 0.5], [-1.0, -1.0], [True, False], [False, True], [4.0, 6.0])
    baselines = tally.baselines()
    assert baselines["val/persona_vector_bare"] == 1.0 and baselines["val/persona_vector_prompted"] == 7.0
    assert baselines["val/persona_vector_prompted_gated"] == pytest.approx(3.0)
    metrics = tally.metrics(baselines)
    assert metrics["val/persona_vector"] == 5.0
    assert metrics["val/persona_vector_progress"] == pytest.approx((5 - 1) / (7 - 1))
    assert metrics["val/persona_vector_progress_gated"] == pytest.approx(((4 + 1) / 2 - 1) / (3 - 1))


def test_a_tiny_run_logs_the_persona_vector_beside_the_likelihood_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLIT_CACHE", str(tmp_path / "cache"))
    cfg = compose(
        [
            "model=tiny",
            "logger=csv",
            "trainer.max_steps=1",
            "sampler.max_new_tokens=4",
            "data.val_size=2",
            "data.batch_size=2",
            "val.every_n_steps=1",
            "val.persona_vector=true",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    first = summary["val_history"][0]
    for key in ("val/persona_vector", "val/persona_vector_bare", "val/persona_vector_prompted"):
        assert key in first, key
    assert list((tmp_path / "cache" / "judges").glob("persona-vectors-*.safetensors"))
