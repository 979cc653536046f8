"""Path safety helpers: names stay inside their root, private caches refuse what others could have written."""

import os
import threading

import pytest

from charlit.paths import UnsafePathError, check_private, exclusive_lock, inside, private_dir, try_lock, write_private


def test_inside_joins_names_below_the_root(tmp_path):
    assert inside(tmp_path, "pairs", "pirate-abc") == tmp_path.resolve() / "pairs" / "pirate-abc"
    assert inside(tmp_path, "a/../b") == tmp_path.resolve() / "b"


@pytest.mark.parametrize("parts", [("../../elsewhere/evil",), ("pairs", "../../x"), ("/etc/evil",), ("..",)])
def test_inside_refuses_names_that_leave_the_root(tmp_path, parts):
    with pytest.raises(UnsafePathError, match="leads outside") as err:
        inside(tmp_path / "cache", *parts)
    assert parts[-1] in str(err.value)


def test_inside_refuses_a_symlink_out_of_the_root(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="leads outside"):
        inside(tmp_path / "cache", "link", "data")


def test_private_dir_is_created_0700(tmp_path):
    path = private_dir(tmp_path / "a" / "kernels")
    assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700


def test_private_dir_refuses_a_group_or_world_writable_dir(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by group or others.*chmod go-w"):
        private_dir(shared)


def test_check_private_refuses_someone_elses_file_and_symlinks(tmp_path, monkeypatch):
    mine = tmp_path / "lib.so"
    mine.write_text("x")
    mine.chmod(0o600)
    check_private(mine)
    (tmp_path / "link.so").symlink_to(mine)
    with pytest.raises(UnsafePathError, match="symbolic link: charlit will not run code from it"):
        check_private(tmp_path / "link.so")
    monkeypatch.setattr(os, "getuid", lambda: mine.stat().st_uid + 1)
    with pytest.raises(UnsafePathError, match="not by you"):
        check_private(mine)


def test_write_private_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "digest").symlink_to(victim)
    write_private(tmp_path / "digest", "abc")
    assert victim.read_text() == "keep" and (tmp_path / "digest").read_text() == "abc"
    assert not (tmp_path / "digest").is_symlink() and ((tmp_path / "digest").stat().st_mode & 0o777) == 0o600


def test_exclusive_lock_makes_the_second_holder_wait(tmp_path):
    order, waited = [], threading.Event()
    with exclusive_lock(tmp_path / ".lock"):
        other = threading.Thread(target=lambda: _take(tmp_path / ".lock", order, waited))
        other.start()
        assert waited.wait(5)
        order.append("first done")
    other.join(5)
    assert order == ["first done", "second"]


def _take(path, order, waited):
    with exclusive_lock(path, on_wait=waited.set):
        order.append("second")


def test_run_and_cache_locks_are_never_taken_through_a_planted_symlink(tmp_path):
    from charlit.checkpointing import LOCK_FILE, RunLock

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).symlink_to(victim)
    with pytest.raises(ValueError, match=r"\.lock is a symlink; .* remove it"):
        RunLock.acquire(run_dir)
    with pytest.raises(ValueError, match="is a symlink"):
        with exclusive_lock(run_dir / LOCK_FILE):
            pass
    assert victim.read_text() == "keep me"


def test_try_lock_refuses_a_lock_another_holder_has(tmp_path):
    first = try_lock(tmp_path / ".lock")
    assert first is not None and try_lock(tmp_path / ".lock") is None
    os.close(first)
    again = try_lock(tmp_path / ".lock")
    assert again is not None
    os.close(again)
