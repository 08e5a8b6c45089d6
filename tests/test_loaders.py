"""Loaders: real files load with the right shape and time; broken ones fail naming file, place and expectation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared

from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.errors import DataFormatError
from vibrawatch.agent.sources.bearing_dirs import load_ims_dir, load_xjtu_dir
from vibrawatch.agent.sources.loaders import detect_format, load, save_snapshot_npz
from vibrawatch.train import cwru


def test_ims_sample_directory_loads_in_time_order() -> None:
    rec = load(shared("ims", "2nd_test_sample"))
    assert isinstance(rec, Recording)
    assert rec.data.shape == (8, 20480, 4)
    assert rec.channels == ("bearing1", "bearing2", "bearing3", "bearing4")
    assert np.all(np.diff(rec.timestamps) > 0)
    assert rec.timestamps[0] == 1076583159  # 2004-02-12 10:52:39 UTC
    assert rec.fs_hz == 20000.0


def test_ims_directory_matches_the_npz_archive_of_the_same_test() -> None:
    rec = load(shared("ims", "2nd_test_sample"))
    with np.load(shared("ims", "2nd_test_full.npz"), allow_pickle=False) as z:
        idx = np.searchsorted(z["timestamps"], rec.timestamps.astype(np.int64))
        np.testing.assert_array_equal(z["data"][idx], rec.data)


def _ims_copy(tmp_path: Path, n: int = 3) -> Path:
    src = shared("ims", "2nd_test_sample")
    d = tmp_path / "ims"
    d.mkdir()
    for p in sorted(src.iterdir())[:n]:
        shutil.copy(p, d / p.name)
    return d


def test_unsorted_listing_still_loads_chronologically(tmp_path: Path) -> None:
    d = _ims_copy(tmp_path)
    # names written newest first: the loader orders by the time in the name, not by the listing
    names = sorted(p.name for p in d.iterdir())
    for p in d.iterdir():
        p.rename(d / ("x" + p.name))
    for name in reversed(names):
        (d / ("x" + name)).rename(d / name)
    rec = load_ims_dir(d)
    assert list(rec.timestamps) == sorted(rec.timestamps)


def test_foreign_file_name_in_ims_directory_is_refused(tmp_path: Path) -> None:
    d = _ims_copy(tmp_path, 2)
    (d / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match=r"'notes.txt' is not an IMS snapshot file name"):
        load(d)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty directory"):
        load(tmp_path / "empty")


@pytest.mark.parametrize(
    ("line_5", "message"),
    [
        ("0.1\t0.2\t0.3", r"line 5: 3 columns \(expected 4 tab-separated numbers"),
        ("0.1\t0.2\t0.3\t0.4\t0.5", r"line 5: 5 columns"),
        ("0.1\tabc\t0.3\t0.4", r"line 5, column 2: 'abc' is not a number"),
        ("0.1\t0.2\tnan\t0.4", r"line 5, column 3: 'nan' is not a finite number"),
    ],
)
def test_broken_ims_file_names_file_line_and_expectation(tmp_path: Path, line_5: str, message: str) -> None:
    d = _ims_copy(tmp_path, 2)
    victim = sorted(d.iterdir())[1]
    lines = victim.read_text().splitlines()
    lines[4] = line_5
    victim.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=message) as e:
        load(d)
    assert victim.name in str(e.value)


def test_truncated_ims_file_is_refused(tmp_path: Path) -> None:
    d = _ims_copy(tmp_path, 2)
    victim = sorted(d.iterdir())[1]
    victim.write_text("\n".join(victim.read_text().splitlines()[:100]) + "\n")
    with pytest.raises(DataFormatError, match=r"100 rows \(expected 20480 rows"):
        load(d)


def test_ims_file_cut_mid_row_is_refused(tmp_path: Path) -> None:
    d = _ims_copy(tmp_path, 2)
    victim = sorted(d.iterdir())[1]
    text = victim.read_text()
    victim.write_text(text[: len(text) // 2].rsplit("\t", 1)[0])  # the writer died in the middle of a row
    with pytest.raises(DataFormatError, match=r"line \d+: \d columns"):
        load(d)


def test_snapshot_archives_load_with_their_own_time_base() -> None:
    ims = load(shared("ims", "2nd_test_full.npz"))
    assert isinstance(ims, Recording) and ims.data.shape == (984, 20480, 4) and not ims.relative_time
    femto = load(shared("femto", "Learning_set_Bearing2_1.npz"))
    assert isinstance(femto, Recording)
    assert femto.data.shape == (911, 2560, 2) and femto.fs_hz == 25600.0 and femto.relative_time
    assert femto.timestamps[1] - femto.timestamps[0] == 10


def _write_npz(path: Path, **overrides: object) -> Path:
    arrays: dict[str, object] = {
        "data": np.zeros((3, 64, 2), np.float32),
        "timestamps": np.array([0, 10, 20]),
        "fs_hz": np.float64(1000.0),
        "channels": np.array(["a", "b"]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fs_hz": None}, r"missing array\(s\) \['fs_hz'\]"),
        ({"timestamps": np.array([0, 20, 10])}, r"array 'timestamps', index 2.*strictly increasing"),
        ({"channels": np.array(["a"])}, r"array 'channels'.*expected 2 channel names"),
        ({"data": np.full((3, 64, 2), np.nan, np.float32)}, r"array 'data'\[0, 0, 0\]: non-finite value"),
        ({"data": np.zeros((3, 64), np.float32)}, r"array 'data'.*\(snapshots, samples, channels\)"),
        ({"channels": np.array([{"a": 1}, {"b": 2}], dtype=object)}, r"cannot be read without pickle"),
    ],
)
def test_broken_snapshot_archive(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    p = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataFormatError, match=message):
        load(p)


def test_snapshot_archive_round_trip(tmp_path: Path) -> None:
    rec = Recording(np.random.default_rng(0).normal(size=(4, 128, 3)).astype(np.float32), np.arange(4) * 60.0,
                    2000.0, ("a", "b", "c"), "mem", relative_time=True, labels=np.array([0, 0, 1, 1]))
    save_snapshot_npz(rec, tmp_path / "r.npz")
    back = load(tmp_path / "r.npz")
    assert isinstance(back, Recording)
    np.testing.assert_array_equal(back.data, rec.data)
    np.testing.assert_array_equal(back.labels, rec.labels)
    assert back.channels == rec.channels and back.relative_time


def test_the_articles_feature_table() -> None:
    t = load(shared("ims", "features", "Averaged_BearingTest_Dataset.csv"))
    assert isinstance(t, FeatureTable)
    assert t.values.shape == (982, 4) and t.columns[0] == "Bearing 1" and not t.relative_time
    assert t.values[0, 0] == pytest.approx(0.0602364373260413)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2004-02-12 11:12:39,0.1,0.2", r"line 4: 3 columns \(expected 5 like the header\)"),
        ("2004-02-12 11:12:39,0.1,x,0.3,0.4", r"line 4, column 3: 'x' is not a number"),
        ("2004-02-12 11:12:39,0.1,NaN,0.3,0.4", r"line 4, column 3: 'NaN' is not a finite number"),
        ("yesterday,0.1,0.2,0.3,0.4", r"line 4, column 1: time 'yesterday'"),
        ("2004-02-12 10:00:00,0.1,0.2,0.3,0.4", r"line 4: time .* does not follow"),
    ],
)
def test_broken_feature_table(tmp_path: Path, row: str, message: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(",b1,b2,b3,b4\n2004-02-12 10:52:39,1,2,3,4\n2004-02-12 11:02:39,1,2,3,4\n" + row + "\n")
    with pytest.raises(DataFormatError, match=message):
        load(p)


def test_a_tables_time_column_is_found_by_its_name_or_named(tmp_path: Path) -> None:
    """Published tables put the time where they like (``file_index, timestamp, filename, ...``)."""
    p = tmp_path / "t.csv"
    p.write_text("b1,Timestamp,b2\n0.5,2004-02-12 10:52:39,-0.25\n0.6,2004-02-12 11:02:39,-0.5\n")
    t = load(p)
    assert isinstance(t, FeatureTable) and t.columns == ("b1", "b2") and not t.relative_time
    np.testing.assert_array_equal(t.values, [[0.5, -0.25], [0.6, -0.5]])
    assert t.timestamps[1] - t.timestamps[0] == 600
    q = tmp_path / "named.csv"
    q.write_text("b1,when,b2\n0.5,0,1\n0.6,10,2\n")
    named = load(q, time_column="WHEN")
    assert isinstance(named, FeatureTable) and named.columns == ("b1", "b2") and named.relative_time
    np.testing.assert_array_equal(named.timestamps, [0, 10])
    with pytest.raises(DataFormatError, match=r"named.csv, line 1: no column named 'stamp' for the time "
                       r"\(expected one of the header's columns: 'b1', 'when', 'b2'\)"):
        load(q, time_column="stamp")
    r = tmp_path / "two.csv"
    r.write_text("time,b1,timestamp\n0,1,0\n")
    with pytest.raises(DataFormatError, match=r"2 columns look like the time \(time, timestamp\).*--time-column"):
        load(r)
    with pytest.raises(DataFormatError, match=r"not a feature table"):
        load(shared("lorenz", "watsoniotp.healthy.phase_aligned.json"), time_column="t")


def test_a_bad_cell_names_its_real_column_when_the_time_is_not_first(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("b1,t,b2\n0.5,0,1\n0.6,10,x\n0.7,5,1\n")
    with pytest.raises(DataFormatError, match=r"line 3, column 3: 'x' is not a number \(expected a number for 'b2'"):
        load(p)
    p.write_text("b1,t,b2\n0.5,0,1\n0.6,10,2\n0.7,5,1\n")
    with pytest.raises(DataFormatError, match=r"line 4: time '5' does not follow '10'"):
        load(p)


def test_lorenz_json_lines_and_list_forms(tmp_path: Path) -> None:
    rec = load(shared("lorenz", "watsoniotp.healthy.phase_aligned.json"))
    assert isinstance(rec, Recording) and rec.data.shape == (1, 3000, 3) and rec.channels == ("x", "y", "z")
    with np.load(shared("lorenz", "lorenz.npz"), allow_pickle=False) as z:
        np.testing.assert_allclose(rec.data[0], z["healthy_phase_aligned"], rtol=1e-6)
    p = tmp_path / "list.json"
    p.write_text(json.dumps([{"x": 1, "y": 2, "z": 3}, {"x": 4, "y": 5, "z": 6}]))
    assert load(p).data.shape == (1, 2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"x": 1, "y": 2, "z": 3}\n{"x": 1, "y": 2}\n', r"line 2.*exactly the keys x, y, z"),
        ('{"x": 1, "y": 2, "z": 3}\n{"x": 1, "y": "a", "z": 3}\n', r"line 2: y = 'a'"),
        ('{"x": 1, "y": 2, "z": 3}\n{"x": 1, "y": 2, "z": \n', r"line 2: not JSON"),
        ("[]", r"no records"),
    ],
)
def test_broken_lorenz_stream(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "s.json"
    p.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        load(p)


def test_unknown_format_says_what_is_supported(tmp_path: Path) -> None:
    p = tmp_path / "data.parquet"
    p.write_bytes(b"PAR1")
    with pytest.raises(DataFormatError, match="unknown data format '.parquet'.*IMS snapshot directory"):
        detect_format(p)


def _femto_dir(tmp_path: Path, n: int = 3, rows: int = 64, sep: str = ",", seed: int = 0) -> tuple[Path, np.ndarray]:
    """A FEMTO/PRONOSTIA bearing directory in the published layout, and the accelerations written to it."""
    d = tmp_path / "Bearing1_1"
    d.mkdir()
    acc = np.round(np.random.default_rng(seed).normal(0, 0.5, (n, rows, 2)), 3)
    for i in range(n):
        lines = [sep.join([str(9), str(39), str(39 + 10 * i), str(65664 + j * 39), f"{acc[i, j, 0]:.3f}",
                           f"{acc[i, j, 1]:.3f}"]) for j in range(rows)]
        (d / f"acc_{i + 1:05d}.csv").write_text("\n".join(lines) + "\n")
    (d / "temp_00001.csv").write_text("9,39,39,0,65.2\n")  # temperature files sit beside them in the originals
    return d, acc


@pytest.mark.parametrize("sep", [",", ";"])
def test_femto_directory_as_published(tmp_path: Path, sep: str) -> None:
    d, acc = _femto_dir(tmp_path, sep=sep)
    assert detect_format(d) == "femto_dir"
    rec = load(d)
    assert isinstance(rec, Recording)
    assert rec.channels == ("horiz_acc_g", "vert_acc_g") and rec.fs_hz == 25600.0 and rec.relative_time
    np.testing.assert_array_equal(rec.timestamps, [0.0, 10.0, 20.0])
    np.testing.assert_allclose(rec.data, acc.astype(np.float32))


def test_femto_directory_matches_the_shared_archive_layout() -> None:
    with np.load(shared("femto", "Learning_set_Bearing2_1.npz"), allow_pickle=False) as z:
        assert tuple(str(c) for c in z["channels"]) == ("horiz_acc_g", "vert_acc_g")
        assert z["data"].shape[1:] == (2560, 2) and float(z["fs_hz"]) == 25600.0


@pytest.mark.parametrize(
    ("line_7", "message"),
    [
        ("9,39,49,1000,0.1", r"acc_00002.csv, line 7: 5 columns \(expected 6 ','-separated numbers: hour"),
        ("9,39,49,1000,0.1,abc", r"acc_00002.csv, line 7, column 6: 'abc' is not a finite number"),
        ("9,39,49,1000,nan,0.2", r"acc_00002.csv, line 7, column 5: 'nan' is not a finite number"),
    ],
)
def test_broken_femto_file_names_file_line_and_expectation(tmp_path: Path, line_7: str, message: str) -> None:
    d, _ = _femto_dir(tmp_path)
    victim = d / "acc_00002.csv"
    lines = victim.read_text().splitlines()
    lines[6] = line_7
    victim.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=message):
        load(d)


def test_femto_directory_refuses_short_files_and_foreign_names(tmp_path: Path) -> None:
    d, _ = _femto_dir(tmp_path)
    victim = d / "acc_00003.csv"
    victim.write_text("\n".join(victim.read_text().splitlines()[:10]) + "\n")
    with pytest.raises(DataFormatError, match=r"acc_00003.csv: 10 rows \(expected 64 rows"):
        load(d)
    victim.unlink()
    (d / "notes.txt").write_text("x")
    with pytest.raises(DataFormatError, match=r"'notes.txt' is not a FEMTO snapshot file name"):
        load(d)


def _cwru_mat(path: Path, variables: dict[str, np.ndarray]) -> Path:
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(path, variables)
    return path


def test_cwru_mat_file_as_published(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    de, fe, ba = (rng.normal(0, 0.1, (1200, 1)) for _ in range(3))
    p = _cwru_mat(tmp_path / "105.mat", {"X105_DE_time": de, "X105_FE_time": fe, "X105_BA_time": ba,
                                         "X105RPM": np.array([[1797]])})
    rec = cwru.load(p)
    assert isinstance(rec, Recording)
    assert rec.channels == ("drive_end", "fan_end", "base") and rec.data.shape == (1, 1200, 3)
    assert rec.fs_hz == 12000.0 and rec.rpm == 1797.0
    np.testing.assert_allclose(rec.data[0, :, 0], de[:, 0].astype(np.float32))


def test_cwru_mat_with_a_second_record_takes_the_files_own(tmp_path: Path) -> None:
    # 99.mat of the published set also carries X098_* variables
    p = _cwru_mat(tmp_path / "99.mat", {"X098_DE_time": np.ones((50, 1)), "X099_DE_time": np.zeros((80, 1)),
                                        "X099_FE_time": np.zeros((80, 1))})
    rec = cwru.load(p)
    assert rec.data.shape == (1, 80, 2) and rec.rpm is None


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"X105_DE_time": np.ones((50, 1)), "X105_FE_time": np.ones((40, 1))},
         r"105.mat, variable X105_FE_time: X105_FE_time has 40 samples"),
        ({"X105_DE_time": np.array([[0.1], [np.nan]])}, r"variable X105_DE_time, row 2: non-finite value"),
        ({"signal": np.ones((5, 1))}, r"no accelerometer variables.*expected X<nnn>_DE_time"),
        ({"X105_DE_time": np.ones((5, 1)), "X105RPM": np.array([[-3]])}, r"variable X105RPM.*one positive number"),
    ],
)
def test_broken_cwru_mat_names_the_variable(tmp_path: Path, variables: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataFormatError, match=message):
        cwru.load(_cwru_mat(tmp_path / "105.mat", variables))


def test_several_cwru_records_without_a_file_number_are_refused(tmp_path: Path) -> None:
    p = _cwru_mat(tmp_path / "normal.mat", {"X097_DE_time": np.ones((5, 1)), "X098_DE_time": np.ones((5, 1))})
    with pytest.raises(DataFormatError, match=r"several records \['X097', 'X098'\]"):
        cwru.load(p)


def test_the_gateway_path_never_imports_scipy(tmp_path: Path) -> None:
    import subprocess
    import sys

    d, _ = _femto_dir(tmp_path)
    code = ("import sys; from vibrawatch.agent.sources.loaders import load; load(sys.argv[1]); "
            "assert 'scipy' not in sys.modules, 'scipy imported'")
    subprocess.run([sys.executable, "-c", code, str(d)], check=True)


def test_the_gateway_refuses_a_mat_file_and_says_where_it_is_read(tmp_path: Path) -> None:
    p = _cwru_mat(tmp_path / "105.mat", {"X105_DE_time": np.ones((50, 1))})
    with pytest.raises(DataFormatError, match="read on the workstation"):
        load(p)


def test_an_eight_channel_ims_directory_names_each_bearings_two_directions(tmp_path: Path) -> None:
    """IMS test 1 records two accelerometers a bearing (x and y): the names say so, and training reads them as
    one bearing's directions (train/sensor_layout.py) rather than eight bearings."""
    from vibrawatch.train.sensor_layout import bearing_indices

    d = _ims_copy(tmp_path, 2)
    for p in d.iterdir():
        rows = [ln.split("\t") for ln in p.read_text().splitlines() if ln.strip()]
        p.write_text("".join("\t".join(r + r) + "\n" for r in rows))  # eight columns, as test 1 has
    rec = load(d)
    assert rec.data.shape[2] == 8
    assert rec.channels == ("bearing1_x", "bearing1_y", "bearing2_x", "bearing2_y", "bearing3_x", "bearing3_y",
                            "bearing4_x", "bearing4_y")
    assert bearing_indices(None, rec.channels) == (0, 0, 1, 1, 2, 2, 3, 3)


XJTU_HEADER = "Horizontal_vibration_signals,Vertical_vibration_signals"


def _xjtu_dir(tmp_path: Path, acc: np.ndarray, first: int = 1) -> Path:
    """An XJTU-SY bearing directory as published: N.csv a minute, a header, then horizontal,vertical per row."""
    d = tmp_path / "Bearing1_1"
    d.mkdir()
    for i, snap in enumerate(acc):
        rows = "".join(f"{h:.6g},{v:.6g}\n" for h, v in snap)
        (d / f"{first + i}.csv").write_text(f"{XJTU_HEADER}\n{rows}")
    return d


def test_xjtu_directory_as_published(tmp_path: Path) -> None:
    """Numbered by minute, channels named by the header (one bearing's two directions: the layout is read from
    those names), every file checked against the first."""
    from vibrawatch.train.sensor_layout import bearing_indices

    acc = np.random.default_rng(1).normal(size=(3, 50, 2)).astype(np.float32)
    d = _xjtu_dir(tmp_path, acc)
    assert detect_format(d) == "xjtu_dir"
    rec = load(d)
    assert isinstance(rec, Recording) and rec.relative_time and rec.fs_hz == 25600.0
    assert rec.channels == ("Horizontal_vibration_signals", "Vertical_vibration_signals")
    assert list(rec.timestamps) == [0.0, 60.0, 120.0]  # 1.csv, 2.csv, 3.csv: a file a minute
    np.testing.assert_allclose(rec.data, acc, rtol=1e-5)
    assert bearing_indices(None, rec.channels) == (0, 0)

    lines = (d / "2.csv").read_text().splitlines()
    lines[7] = "0.1,abc"
    (d / "2.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"2\.csv.*line 8, column 2: 'abc' is not a finite number"):
        load(d)
    (d / "2.csv").write_text("a,b\n" + "\n".join(lines[1:7]) + "\n")
    with pytest.raises(DataFormatError, match=r"2\.csv.*line 1: header 'a,b'"):
        load(d)
    (d / "2.csv").write_text(f"{XJTU_HEADER}\n" + "\n".join(lines[1:7]) + "\n")
    with pytest.raises(DataFormatError, match=r"2\.csv: 6 rows \(expected 50 rows like the first"):
        load(d)
    (d / "2.csv").unlink()
    (d / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="not an XJTU-SY snapshot file name"):
        load_xjtu_dir(d)
