"""What a new user's drill of the workstation CLI found, each as the user ran it: a run that appears or changes
all at once, and every mistake answered with one `error:` line and exit code 2, never a traceback."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import IO

import pytest
from conftest import TINY_CONFIG, cli


def _invoke(*args: object, input: str | None = None):  # noqa: A002 - click's own name
    from typer.testing import CliRunner

    from vibrawatch.convert.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def _fails(*args: object, input: str | None = None) -> str:
    """The CLI's answer to a mistake: exit 2 and one `error:` line (an exception would be exit 1)."""
    result = _invoke(*args, input=input)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output and result.output.startswith("error: "), result.output
    return result.output


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _siblings(d: Path) -> list[str]:
    """What a train left beside the run: hidden work directories would be half runs."""
    return sorted(p.name for p in d.parent.iterdir() if p.name != d.name)


@pytest.fixture()
def own_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run that a test may damage, alone in its folder."""
    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_run, run)
    return run


def _config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return cfg


# 1. a run appears or changes all at once


def test_an_interrupted_train_leaves_the_old_run_byte_identical(own_run: Path, tiny_data: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the last step (model, windows and run.json already written) changes nothing of the old run."""
    import vibrawatch.train.plots as plots

    before = _digests(own_run)

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "training_plots", interrupted)
    result = _invoke("train", "--data", tiny_data, "--healthy-until", "50%", "--config", TINY_CONFIG,
                     "--out", own_run, "--quiet")
    assert result.exit_code != 0
    assert _digests(own_run) == before
    assert _siblings(own_run) == []  # no half run beside it


def test_training_again_replaces_the_whole_run(own_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """The previous model's evaluation and plots go with it: `convert` would ship them in the manifest."""
    (own_run / "evaluation_old.json").write_text(json.dumps({"lead_hours": 99.0}))
    (own_run / "scores_old.png").write_bytes(b"old")
    cfg = _config(tmp_path, TINY_CONFIG.read_text().replace("window = 6", "window = 5"))
    cli("train", "--data", tiny_data, "--healthy-until", "50%", "--config", cfg, "--out", own_run, "--quiet")
    assert sorted(p.name for p in own_run.iterdir()) == ["healthy_scores.png", "loss.png", "model.keras",
                                                         "run.json", "windows.npz"]
    assert json.loads((own_run / "run.json").read_text())["window"]["length"] == 5
    assert _siblings(own_run) == []


def test_a_train_removes_what_a_killed_train_left_and_only_that(own_run: Path, tiny_data: Path) -> None:
    """A train killed by SIGKILL leaves its hidden work directory behind; the next train into the same run
    removes it once the process that made it is gone, and leaves one whose process still runs (a second train
    at work) or whose maker it cannot tell, saying so on one line."""
    from vibrawatch.train.workdirs import host_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    beside = own_run.parent
    gone = beside / f".r.training-{dead.pid}-{host_tag()}-0123abcd"
    alive = beside / f".r.training-{os.getpid()}-{host_tag()}-4567cdef"
    unknown = beside / ".r.training-89abcdef"  # an older vibrawatch's name: no maker in it
    for d in (gone, alive, unknown):
        d.mkdir()
        (d / "model.keras").write_bytes(b"half a model")
    result = _invoke("train", "--data", tiny_data, "--healthy-until", "50%", "--config", TINY_CONFIG,
                     "--out", own_run, "--quiet")
    assert result.exit_code == 0, result.output
    assert _siblings(own_run) == sorted([alive.name, unknown.name])
    assert f"note: {alive}: an unfinished train's directory left in place (process {os.getpid()} that made it is " \
           f"still running); remove it once no train writes to {own_run}" in result.stderr.splitlines()
    assert f"note: {unknown}: an unfinished train's directory left in place (no maker" in result.stderr
    assert str(gone) not in result.stderr


def test_a_convert_that_fails_half_way_leaves_the_old_bundle_byte_identical(
        tiny_run: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk full after the tar's first member: before, the .tar was rewritten in place and left truncated; now
    the bundle is written to a hidden temporary file renamed over it when complete, removed on failure."""
    from vibrawatch.agent.model.bundle import load_bundle

    folder = tmp_path / "bundles"
    folder.mkdir()
    bundle = folder / "b.tar"
    shutil.copyfile(tiny_bundle, bundle)
    before = bundle.read_bytes()
    add = tarfile.TarFile.addfile
    written: list[str] = []

    def full_disk(self: tarfile.TarFile, info: tarfile.TarInfo, fileobj: IO[bytes] | None = None) -> None:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(info.name)
        add(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", full_disk)
    out = _fails("convert", tiny_run, "--out", bundle)
    assert f"--out {bundle}: the bundle could not be written ({os.strerror(errno.ENOSPC)}); the previous bundle " \
           "is as it was" in out
    assert written and bundle.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["b.tar"]  # no temporary file left beside it

    monkeypatch.undo()  # the disk has room again: the bundle is replaced whole
    cli("convert", tiny_run, "--out", bundle)
    load_bundle(bundle)
    assert sorted(p.name for p in folder.iterdir()) == ["b.tar"]


def test_a_new_bundle_that_fails_the_agents_checks_never_replaces_the_old_one(
        tiny_run: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`convert` reads the new tar back with the agent's own checks before the rename: before, a bundle whose
    self-test failed had already replaced the good one when the error was said."""
    from vibrawatch.agent.model.bundle import BundleSelfTestError
    from vibrawatch.convert import bundle as writer

    folder = tmp_path / "bundles"
    folder.mkdir()
    bundle = folder / "b.tar"
    shutil.copyfile(tiny_bundle, bundle)
    before = bundle.read_bytes()

    def failing(path: Path) -> None:
        raise BundleSelfTestError(f"{path}: golden outputs differ by 0.5")

    monkeypatch.setattr(writer, "load_bundle", failing)
    out = _fails("convert", tiny_run, "--out", bundle)
    assert f"--out {bundle}: the new bundle fails the agent's checks" in out and "golden outputs differ" in out
    assert "the previous bundle is as it was" in out
    assert bundle.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["b.tar"]


def test_train_refuses_an_out_that_is_a_file_or_holds_other_files_before_training(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    # --data does not even exist: --out is checked first, not after the training
    assert "exists and is not a directory" in _fails("train", "--data", tmp_path / "nope.npz", "--out", f)
    d = tmp_path / "data"
    d.mkdir()
    (d / "bearing.npz").write_bytes(b"mine")
    out = _fails("train", "--data", tmp_path / "nope.npz", "--out", d)
    assert "holds files a run does not make (bearing.npz)" in out
    assert (d / "bearing.npz").read_bytes() == b"mine" and f.read_text() == "mine"


# 2. one `error:` line, exit 2


@pytest.mark.parametrize("content", [b"PK\x03\x04 not really a zip", b"PK\x03\x04" + b"\0" * 40])
def test_a_damaged_npz_is_an_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    assert "not a readable .npz archive" in _fails("train", "--data", bad, "--out", tmp_path / "r")


def test_a_truncated_npz_is_an_error(tiny_data: Path, tiny_run: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.npz"
    cut.write_bytes(tiny_data.read_bytes()[: tiny_data.stat().st_size // 2])
    assert "not a readable .npz archive" in _fails("train", "--data", cut, "--out", tmp_path / "r")
    assert "not a readable .npz archive" in _fails("evaluate", tiny_run, "--data", cut)


@pytest.mark.parametrize(("text", "says"), [
    ("[model]\nbatch_size = 0\n", "[model] batch_size must be >= 1"),
    ("[model]\nseed = -1\n", "[model] seed must be from 0"),
    ("[model]\nlearning_rate = 0.0\n", "[model] learning_rate must be a number > 0"),
    ("[model]\npatience = -1\n", "[model] patience must be >= 0"),
    ("[alarm]\nraise_after = \"x\"\n", "[alarm] raise_after = 'x': expected a whole number >= 1"),
    ("[alarm]\nraise_after = 2.7\n", "[alarm] raise_after = 2.7: expected a whole number >= 1"),
    ("[alarm]\nraise_after = \"3\"\n", "[alarm] raise_after = '3'"),
    ("[alarm]\nclear_after = true\n", "[alarm] clear_after = True"),
    ("[alarm]\nhysteresis = \"0.5\"\n", "[alarm] hysteresis = '0.5': expected a number in (0, 1]"),
    ("[alarm]\nhysteresis = 1.5\n", "[alarm] hysteresis = 1.5"),
    ("[alarm]\nraise_afer = 2\n", "[alarm] unknown key(s) ['raise_afer']"),
    # 3. a zero is refused, not replaced by the default while run.json records it
    ("[features]\nframe_length = 0\n", "[features] frame_length = 0: expected a whole number of samples >= 1"),
    ("[features]\nfs_hz = 0\n", "[features] fs_hz = 0: expected a sample rate > 0"),
])
def test_config_values_out_of_range_are_errors(tmp_path: Path, tiny_data: Path, text: str, says: str) -> None:
    cfg = _config(tmp_path, text)
    out = _fails("train", "--data", tiny_data, "--config", cfg, "--out", tmp_path / "r")
    assert f"{cfg}: {says}" in out
    assert not (tmp_path / "r").exists()


def test_a_typed_alarm_section_still_trains(tmp_path: Path) -> None:
    from vibrawatch.train.config import load_config

    cfg = load_config(_config(tmp_path, "[alarm]\nraise_after = 2\nclear_after = 4\nhysteresis = 1\n"))
    assert cfg.alarm.to_dict() == {"raise_after": 2, "clear_after": 4, "hysteresis": 1.0}


def test_existing_files_and_directories_where_the_other_is_wanted(own_run: Path, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("mine")
    assert "an existing file" in _fails("convert", own_run, "--out", f)
    tar_dir = tmp_path / "dir.tar"
    tar_dir.mkdir()
    assert "a directory, but a name ending .tar" in _fails("convert", own_run, "--out", tar_dir)
    assert "an existing file" in _fails("keys", "new", "--out-dir", f)
    assert f.read_text() == "mine"


@pytest.mark.parametrize(("args", "says"), [
    (["bearing", "--snapshots", "0"], "--snapshots, --samples and --channels must be >= 1"),
    (["bearing", "--channels", "2", "--failing", "5"], "--failing 5: a bearing index from 0 to 1"),
    (["bearing", "--fault", "cage"], "--fault 'cage': expected one of outer, inner, ball"),
    (["bearing", "--onset", "1.5"], "--onset 1.5: a share of the run"),
    (["bearing", "--fs-hz", "5000", "--snapshots", "2", "--samples", "64"], "simulate bearing: resonance_hz"),
    (["lorenz", "--kind", "foo"], "--kind 'foo': expected one of healthy, broken"),
])
def test_simulate_values_out_of_range_are_errors(tmp_path: Path, args: list[str], says: str) -> None:
    assert says in _fails("simulate", *args, "--out", tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()


def test_simulate_says_the_file_it_wrote(tmp_path: Path) -> None:
    out = cli("simulate", "lorenz", "--n", "50", "--out", tmp_path / "noext")
    assert out.startswith(f"wrote {tmp_path / 'noext.npz'}:") and (tmp_path / "noext.npz").is_file()
    (tmp_path / "d.npz").mkdir()
    assert "is a directory" in _fails("simulate", "lorenz", "--n", "50", "--out", tmp_path / "d.npz")


def test_a_damaged_run_is_an_error_for_evaluate_and_convert(own_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    (own_run / "model.keras").unlink()
    assert "an incomplete run (no model.keras)" in _fails("evaluate", own_run, "--data", tiny_data)
    assert "an incomplete run (no model.keras)" in _fails("convert", own_run, "--out", tmp_path / "b.tar")
    (own_run / "model.keras").write_bytes(b"not a model")
    assert "model.keras: cannot be loaded" in _fails("convert", own_run, "--out", tmp_path / "b.tar")
    (own_run / "run.json").write_text('{"schema": "vibrawatch.run/2", ')
    assert "run.json: not readable JSON" in _fails("evaluate", own_run, "--data", tiny_data)
    assert "run.json: not readable JSON" in _fails("convert", own_run, "--out", tmp_path / "b.tar")


def test_a_damaged_windows_npz_is_an_error_for_convert(own_run: Path, tmp_path: Path) -> None:
    w = own_run / "windows.npz"
    w.write_bytes(w.read_bytes()[:1000])
    assert "windows.npz: not a readable .npz archive" in _fails("convert", own_run, "--out", tmp_path / "b.tar")


def test_a_damaged_evaluation_is_an_error_for_convert(own_run: Path, tmp_path: Path) -> None:
    (own_run / "evaluation_x.json").write_text('{"lead_hours": ')
    assert "evaluation_x.json: not readable JSON" in _fails("convert", own_run, "--out", tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()


def test_an_interrupted_evaluate_leaves_its_old_report_whole(own_run: Path, tiny_data: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    report = own_run / f"evaluation_{tiny_data.stem}.json"
    report.write_text('{"old": true}')

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    assert _invoke("evaluate", own_run, "--data", tiny_data, "--quiet").exit_code != 0
    assert report.read_text() == '{"old": true}'
    assert not [p for p in own_run.iterdir() if p.name.startswith(".")]


def test_operators_add_to_a_directory_is_an_error(tmp_path: Path) -> None:
    out = _fails("operators", "add", "alice", "--file", tmp_path, "--password-stdin", input="correct horse battery\n")
    assert "a directory; name the operators file" in out


# 4. --failure-at within the data


@pytest.mark.parametrize(("at", "says"), [("100h", "after the data's last time"),
                                          ("1h", "within the known-healthy part of the run")])
def test_failure_at_out_of_the_data_is_an_error(tiny_run: Path, tiny_data: Path, at: str, says: str) -> None:
    assert says in _fails("evaluate", tiny_run, "--data", tiny_data, "--failure-at", at, "--quiet")


def test_operators_add_twice_replaces_the_password_on_one_line(tmp_path: Path) -> None:
    """As htpasswd does; before, a second line for the same name was appended and the message said 'added'."""
    from vibrawatch.monitor.auth import Operators

    f = tmp_path / "operators"
    for password, said in (("first password 1", "added"), ("second password 2", "password replaced")):
        out = _invoke("operators", "add", "alice", "--file", f, "--password-stdin", input=password + "\n")
        assert out.exit_code == 0 and f"operator alice {said}" in out.output, out.output
    assert [ln.split(":", 1)[0] for ln in f.read_text().splitlines()] == ["alice"]
    assert f.stat().st_mode & 0o777 == 0o600
    ops = Operators.load(f)
    assert ops.check("alice:second password 2") == "alice" and ops.check("alice:first password 1") is None
