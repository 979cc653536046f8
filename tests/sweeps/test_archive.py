"""Archiving a sweep's report files (charlit.sweeps.archive) and pooling archives of two sweeps into one study."""

import json

import pytest

from charlit.sweeps.archive import archive_sweep
from charlit.sweeps.report import write_report
from report import main as report_main


def _job(sweep, name, persona, seed, model_scores):
    """A finished self_distill job of a method study: overrides, summary, eval scores and a checkpoint."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- +arm=self_distill\n- persona={persona}\n- seed={seed}\n")
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    summary = {
        "method": "self_distill",
        "persona": persona,
        "metrics": {"compute/flops": 10.0},
        "config": {"seed": seed},
    }
    (job / "summary.json").write_text(json.dumps(summary))
    (job / "eval").mkdir()
    scores = {"model": model_scores, "bare": [0.0, 0.0], "prompted": [2.0, 2.0]}
    suites = {"ood": {"per_prompt": {"likelihood_gated": scores, "likelihood": scores}}}
    (job / "eval" / "eval.json").write_text(json.dumps({"suites": suites}))
    (job / "final").mkdir()
    (job / "final" / "model.safetensors").write_bytes(b"weights")
    return job


def test_an_archive_keeps_only_the_report_files_and_pools_with_a_later_sweep(tmp_path):
    first, second = tmp_path / "multirun" / "a", tmp_path / "multirun" / "b"
    _job(first, "0_seed=0", "pirate", 0, [1.0, 1.0])  # range 0.5
    _job(second, "0_seed=1", "pirate", 1, [2.0, 2.0])  # range 1.0
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of any sweep")
    (first / "0_seed=0" / "eval" / "extra").mkdir()
    (first / "0_seed=0" / "eval" / "extra" / "summary.json").symlink_to(outside)  # a link is never copied

    archive = tmp_path / "archive"
    copies = archive_sweep(first, archive / "a")
    assert sorted(p.relative_to(archive).as_posix() for p in copies) == [
        "a/0_seed=0/.hydra/overrides.yaml",
        "a/0_seed=0/eval/eval.json",
        "a/0_seed=0/summary.json",
    ]
    archive_sweep(second, archive / "b")
    # the two seeds pool into one arm: (mean model 1.5 - bare 0) / (prompted 2 - bare 0) = 0.75
    table = write_report(archive, tmp_path / "report")["study"]["table"]
    assert [(row["arm"], row["jobs"]) for row in table] == [("self_distill", 2)]
    assert table[0]["ood_gated"]["mean"] == pytest.approx(0.75)


def test_archiving_refuses_a_destination_inside_the_sweep_and_a_sweep_without_jobs(tmp_path):
    _job(tmp_path / "sweep", "0_seed=0", "pirate", 0, [1.0, 1.0])
    with pytest.raises(ValueError, match="inside the sweep dir"):
        archive_sweep(tmp_path / "sweep", tmp_path / "sweep" / "archive")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No finished jobs"):
        archive_sweep(tmp_path / "empty", tmp_path / "archive")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        archive_sweep(tmp_path / "missing", tmp_path / "archive")


def test_report_cli_archives_beside_the_report(tmp_path, capsys):
    _job(tmp_path / "sweep", "0_seed=0", "pirate", 0, [1.0, 1.0])
    assert report_main([str(tmp_path / "sweep"), "--archive", str(tmp_path / "kept")]) == 0
    assert "archive: 3 files" in capsys.readouterr().out
    assert (tmp_path / "kept" / "0_seed=0" / "eval" / "eval.json").is_file()
    assert not (tmp_path / "kept" / "0_seed=0" / "final").exists()
    (tmp_path / "sweep" / "report.csv").unlink()
    assert report_main([str(tmp_path / "sweep"), "--archive", str(tmp_path / "sweep" / "x")]) == 2
    assert "inside the sweep dir" in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "report.csv").exists()  # refused before the report was written


def test_archiving_never_writes_through_a_link_in_the_destination(tmp_path):
    _job(tmp_path / "sweep", "0_seed=0", "pirate", 0, [1.0, 1.0])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "summary.json").write_text("keep me")
    linked_file = tmp_path / "file_link"
    (linked_file / "0_seed=0").mkdir(parents=True)
    (linked_file / "0_seed=0" / "summary.json").symlink_to(outside / "summary.json")
    with pytest.raises(ValueError, match="symbolic link"):
        archive_sweep(tmp_path / "sweep", linked_file)
    linked_dir = tmp_path / "dir_link"
    linked_dir.mkdir()
    (linked_dir / "0_seed=0").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="symbolic link"):
        archive_sweep(tmp_path / "sweep", linked_dir)
    assert (outside / "summary.json").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["summary.json"]
