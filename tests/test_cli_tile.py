import csv
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pipeline.cli import main

from .slides import tissue_image, write_pyramid


def _summary(out):
    with open(out / "tiling_summary.csv") as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


@pytest.fixture()
def batch(tmp_path, block_tiff):
    """Two good slides, one truncated file and one that is not a slide."""
    folder = tmp_path / "slides"
    folder.mkdir()
    good_a = folder / "a.tiff"
    good_a.write_bytes(block_tiff.read_bytes())
    good_b = write_pyramid(folder / "b.tiff", tissue_image(3000, 2000, [(500, 500, 1500, 900)]))
    broken = folder / "broken.tiff"
    broken.write_bytes(block_tiff.read_bytes()[:3000])
    junk = folder / "notes.svs"
    junk.write_text("this is not a slide")
    return [good_a, good_b, broken, junk]


def test_batch_goes_on_past_bad_slides_and_exits_1(tmp_path, batch, capsys):
    out = tmp_path / "out"
    assert main(["-q", "tile", *map(str, batch), "--out", str(out)]) == 1
    rows = _summary(out)
    assert rows["a"]["status"] == rows["b"]["status"] == "ok"
    assert rows["a"]["n_tiles"] == "12" and rows["a"]["mpp_source"] == "openslide"
    for bad in ("broken", "notes"):
        assert rows[bad]["status"] == "error"
        assert str(tmp_path) in rows[bad]["error"]
    assert "convert" in rows["notes"]["error"] and "truncated" in rows["broken"]["error"]
    for sub in ("tiles", "masks", "qc"):
        assert (out / sub / "a.png").exists() or (out / sub / "a.h5").exists()
    err = capsys.readouterr().err
    assert "broken.tiff" in err and "notes.svs" in err


def test_rerun_skips_finished_slides_and_overwrite_redoes_them(tmp_path, batch):
    out = tmp_path / "out"
    good = [str(p) for p in batch[:2]]
    assert main(["-q", "tile", *good, "--out", str(out)]) == 0
    first = (out / "tiles" / "a.h5").stat().st_mtime_ns
    assert main(["-q", "tile", *good, "--out", str(out)]) == 0
    rows = _summary(out)
    assert rows["a"]["reused"] == "True" and rows["a"]["n_tiles"] == "12"
    assert (out / "tiles" / "a.h5").stat().st_mtime_ns == first
    assert main(["-q", "tile", *good, "--out", str(out), "--overwrite"]) == 0
    assert _summary(out)["a"]["reused"] == "False"
    assert (out / "tiles" / "a.h5").stat().st_mtime_ns != first
    # changed parameters are not "finished": tiled again without --overwrite
    assert main(["-q", "tile", *good, "--out", str(out), "--min-tissue", "0.9"]) == 0
    assert _summary(out)["a"]["reused"] == "False"


def test_interrupted_run_resumes(tmp_path, batch):
    out = tmp_path / "out"
    good = [str(p) for p in batch[:2]]
    assert main(["-q", "tile", good[0], "--out", str(out)]) == 0
    (out / "tiles" / ".b.h5.12345.tmp").write_bytes(b"half-written")  # a killed writer's leftover
    assert main(["-q", "tile", *good, "--out", str(out)]) == 0
    rows = _summary(out)
    assert rows["a"]["reused"] == "True" and rows["b"]["reused"] == "False"
    with h5py.File(out / "tiles" / "b.h5") as f:
        assert len(f["coords"]) > 0


def test_two_workers_give_identical_coordinates(tmp_path, batch):
    good = [str(p) for p in batch[:2]]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["-q", "tile", *good, "--out", str(one)]) == 0
    assert main(["-q", "tile", *good, "--out", str(two), "--workers", "2"]) == 0
    for name in ("a", "b"):
        with (
            h5py.File(one / "tiles" / f"{name}.h5") as f1,
            h5py.File(two / "tiles" / f"{name}.h5") as f2,
        ):
            np.testing.assert_array_equal(f1["coords"][:], f2["coords"][:])


def test_manifest_problems_are_all_reported_before_any_work(tmp_path, block_tiff, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "slide_id,path,label,patient_id,split,mpp\n"
        f"s1,{block_tiff},leiomyosarcoma,p1,train,\n"
        "s1,missing.tiff,meningioma,p2,test,\n"
        f"s3,{block_tiff},meningioma,p1,test,abc\n"
        f"s4,{block_tiff},meningioma,p4,holdout,0.001\n"
    )
    out = tmp_path / "out"
    assert main(["-q", "tile", "--manifest", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for expected in ("appears 2 times", "missing.tiff", "'abc'", "holdout", "0.001", "'p1'"):
        assert expected in err
    assert not out.exists()


def test_manifest_relative_paths_and_mpp_override(tmp_path):
    folder = tmp_path / "cohort"
    (folder / "slides").mkdir(parents=True)
    write_pyramid(
        folder / "slides" / "x.tiff", tissue_image(3000, 2000, [(400, 400, 1800, 1200)]), mpp=None
    )
    (folder / "manifest.csv").write_text("slide_id,path,mpp\ncase-x,slides/x.tiff,0.25\n")
    out = tmp_path / "out"
    assert main(["-q", "tile", "--manifest", str(folder / "manifest.csv"), "--out", str(out)]) == 0
    row = _summary(out)["case-x"]
    assert row["mpp_source"] == "override" and float(row["mpp"]) == 0.25


def test_missing_resolution_names_the_fix(tmp_path, capsys):
    path = write_pyramid(
        tmp_path / "nores.tiff", tissue_image(2000, 1000, [(0, 0, 900, 900)]), mpp=None
    )
    out = tmp_path / "out"
    assert main(["-q", "tile", str(path), "--out", str(out)]) == 1
    assert "--slide-mpp" in _summary(out)["nores"]["error"]
    assert main(["-q", "tile", str(path), "--out", str(out), "--slide-mpp", "0.25"]) == 0


def test_usage_errors_exit_2(tmp_path, block_tiff):
    assert main(["tile", "--out", str(tmp_path)]) == 2  # no slides
    assert main(["tile", str(block_tiff), "--out", str(tmp_path), "--overlap", "300"]) == 2
    assert main(["tile", str(block_tiff), "--out", str(tmp_path), "--min-tissue", "2"]) == 2
    assert main(["--version"]) == 0


HEAVY = ("torch", "scipy.spatial", "pipeline.synth", "sklearn", "pipeline.viewer")


@pytest.mark.parametrize(
    "argv", [["--version"], ["tile", "--help"], ["view", "--help"], ["predict", "--help"], None]
)
def test_cli_starts_fast_without_heavy_imports(tmp_path, cmu_svs, argv):
    heavy = HEAVY
    if argv is None:  # a tile run: scikit-image's morphology brings scipy.spatial (~0.1 s)
        argv = ["-q", "tile", str(cmu_svs), "--out", str(tmp_path)]
        heavy = tuple(m for m in HEAVY if m != "scipy.spatial")
    code = (
        "import sys; from pipeline.cli import main; "
        f"rc = main({argv!r}); "
        f"heavy = [m for m in {heavy!r} if m in sys.modules]; "
        "assert not heavy, f'imported {heavy}'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if argv[0] == "-q":
        assert (tmp_path / "qc" / "cmu_small_region.png").exists()


def test_output_into_a_closed_pipe_ends_quietly():
    """``fascicle ihc ... | head -1``: the reader leaves early; no traceback, no error."""
    code = "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["ihc", "--panel", "desmin+ SMA+ h-caldesmon+ EMA- S100-", "--top", "8"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # like head after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "error" not in err.lower(), err
