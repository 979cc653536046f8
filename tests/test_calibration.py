"""charlit.calibration: a fast path is chosen by timing it here, cached per machine and shapes."""

import json
import time

import torch

from charlit.calibration import calibrated_choice
from charlit.models import onednn


def _sleeper(seconds, calls):
    def run():
        calls.append(1)
        time.sleep(seconds)

    return run


def test_the_faster_candidate_wins_and_is_cached_per_shapes(tmp_path):
    path, slow, fast = tmp_path / "calibration.json", [], []
    candidates = {"torch": _sleeper(0.02, slow), "onednn": _sleeper(0.001, fast)}
    choice, record = calibrated_choice("demo", [[4, 8]], candidates, default="torch", repeats=3, path=path)
    assert choice == "onednn" and not record["cached"]
    assert record["seconds"]["torch"] > record["seconds"]["onednn"]
    assert len(slow) == len(fast) == 4  # one warm-up and three timed calls each
    again, record = calibrated_choice("demo", [[4, 8]], candidates, default="torch", repeats=3, path=path)
    assert again == "onednn" and record["cached"] and len(slow) == 4  # from the cache: nothing timed
    calibrated_choice("demo", [[4, 16]], candidates, default="torch", repeats=1, path=path)
    assert len(json.loads(path.read_text())) == 2  # other shapes: measured and cached on their own


def test_the_default_stays_unless_another_is_faster_by_the_margin(tmp_path):
    candidates = {"torch": _sleeper(0.010, []), "onednn": _sleeper(0.0098, [])}
    choice, _ = calibrated_choice("tie", [1], candidates, default="torch", margin=0.5, path=tmp_path / "c.json")
    assert choice == "torch"


def test_a_damaged_or_foreign_cache_is_measured_again(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    calls = []
    choice, record = calibrated_choice("x", [1], {"a": _sleeper(0, calls)}, default="a", repeats=1, path=path)
    assert choice == "a" and not record["cached"] and calls
    data = json.loads(path.read_text())
    (key,) = data
    data[key]["choice"] = "no-such-path"  # written by someone else: not a candidate, so measured again
    path.write_text(json.dumps(data))
    assert not calibrated_choice("x", [1], {"a": _sleeper(0, [])}, default="a", repeats=1, path=path)[1]["cached"]


def test_onednn_calibration_times_the_models_own_shapes(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 16))
    use, record = onednn.calibrate(model, path=tmp_path / "c.json")
    if not onednn._op_available():
        assert use is False and record["seconds"] == {}
        return
    assert set(record["seconds"]) == {"onednn", "torch"} and use == (record["choice"] == "onednn")
    (key,) = json.loads((tmp_path / "c.json").read_text())
    assert json.loads(key)["shapes"]["linear"] == [[8, 16], [16, 8]]


def test_decoding_follows_the_models_choice():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert onednn.active(model) == onednn.supported(model)
    onednn.set_active(model, False)
    assert not onednn.active(model)


def test_candidates_are_timed_alternately_so_passing_load_hits_both():
    from charlit.calibration import time_candidates

    order = []
    seconds = time_candidates({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3)
    assert order == ["a", "b"] * 4 and set(seconds) == {"a", "b"}  # warm-ups, then a b a b a b
