"""Faults and bad input: nothing lost, nothing written outside --out, no tracebacks, and the
exit codes of the README (0 done, 1 some inputs failed, 2 bad usage before any work)."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.core.batch import run_slides
from pipeline.prediction.locks import SlideLock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; every run is checked for a Python traceback."""

    def run(*args: str) -> tuple[int, str]:
        code = main(["-q", *map(str, args)])
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return code, err

    return run


def _slides(tiny_cohort, n=2) -> list[Path]:
    return sorted((tiny_cohort / "slides").glob("*.tiff"))[:n]


def _manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# -- unsafe ids -----------------------------------------------------------------------------
@pytest.mark.parametrize("slide_id", ["../../x", "/abs/path/x", "sub/dir/x", ".hidden", "a\tb"])
def test_unsafe_slide_ids_are_refused_before_any_work(
    cli, tiny_cohort, tiny_model, tmp_path, slide_id
):
    slide = _slides(tiny_cohort, 1)[0]
    manifest = _manifest(tmp_path / "m.csv", [{"slide_id": slide_id, "path": str(slide)}])
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    code, err = cli("tile", "--manifest", manifest, "--out", out)
    assert code == 2 and "slide_id" in err
    code, err = cli("predict", "--manifest", manifest, "--model", tiny_model, "--out", out)
    assert code == 2 and "slide_id" in err
    assert set(tmp_path.rglob("*")) == before, "nothing written anywhere"


# -- resume that is honest ------------------------------------------------------------------
def _predict(cli, slides, model, out, *extra):
    return cli("predict", *slides, "--model", model, "--out", out, "--workers", "0", *extra)


def test_errors_are_retried_when_the_file_is_fixed(cli, tiny_cohort, tiny_model, tmp_path):
    good = _slides(tiny_cohort, 1)[0]
    slide = tmp_path / "case.tiff"
    slide.write_bytes(good.read_bytes()[:5000])
    out = tmp_path / "out"
    code, err = _predict(cli, [slide], tiny_model, out)
    assert code == 1 and "case.tiff" in err
    shutil.copy(good, slide)  # as the message advised
    code, _ = _predict(cli, [slide], tiny_model, out)
    assert code == 0
    assert json.loads((out / "slides" / "case" / "result.json").read_text())["status"] == "ok"


def _lock(out: Path, slide_id: str, host: str, pid: int, age_s: float = 0) -> Path:
    path = out / "slides" / slide_id / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{host} {pid}")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_live_and_foreign_locks_are_reported_not_done(cli, tiny_cohort, tiny_model, tmp_path):
    slides = _slides(tiny_cohort, 2)
    out = tmp_path / "out"
    held = slides[0].stem
    _lock(out, held, "another-node", 4242)  # fresh heartbeat from another machine
    code, err = _predict(cli, slides, tiny_model, out)
    assert code == 1 and "another-node 4242" in err and "--wait" in err
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert rows[held]["status"] == "not_done" and rows[slides[1].stem]["status"] == "ok"
    _lock(out, held, socket.gethostname(), os.getpid())  # a live process here
    assert _predict(cli, slides, tiny_model, out)[0] == 1
    assert _predict(cli, slides, tiny_model, out, "--overwrite")[0] == 0  # takes locks over
    assert not (out / "slides" / held / ".lock").exists()


def test_stale_locks_are_taken_over(tmp_path):
    folder = tmp_path / "slides" / "s1"
    _lock(tmp_path, "s1", "another-node", 1, age_s=3600)  # its heartbeat stopped an hour ago
    lock = SlideLock(folder)
    assert lock.acquire()
    lock.release()
    _lock(tmp_path, "s1", socket.gethostname(), 999_999_999)  # a dead pid here
    assert SlideLock(folder).acquire()


def test_a_live_lock_heartbeats(tmp_path, monkeypatch):
    import pipeline.prediction.locks as locks

    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    lock = SlideLock(tmp_path / "s")
    assert lock.acquire()
    os.utime(lock.path, (0, 0))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 5
    lock.release()


# -- dead workers and killed runs -----------------------------------------------------------
class _Entry:
    def __init__(self, slide_id):
        self.slide_id, self.path = slide_id, Path(f"/x/{slide_id}.svs")


def _dies_on(entry, victim: str) -> dict:
    if entry.slide_id == victim:
        os._exit(9)  # as the OOM killer would
    time.sleep(0.2)
    return {"done": True}


def test_a_dead_worker_becomes_an_error_row_and_the_batch_goes_on():
    entries = [_Entry(f"s{i}") for i in range(6)]
    rows = run_slides(_dies_on, entries, workers=2, progress=False, victim="s2")
    status = {r["slide_id"]: r["status"] for r in rows}
    assert status.pop("s2") == "error" and set(status.values()) == {"ok"}
    assert "worker process died" in rows[2]["error"] and "/x/s2.svs" in rows[2]["error"]


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_pool_workers_die_with_a_killed_main_process(tiny_cohort, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.cli", "-q", "tile", "--manifest",
           str(tiny_cohort / "manifest.csv"), "--out", str(tmp_path / "t"), "--workers", "2",
           "--mpp", "1.0", "--tile-px", "64"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline, workers = time.time() + 60, set()
    while time.time() < deadline and len(workers) < 2:
        workers = {c for c in _children(proc.pid) if _alive(c)} - {proc.pid}
        time.sleep(0.1)
    assert workers, "the pool never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)


def _fields(out: Path) -> dict:
    docs = {}
    for path in sorted((out / "slides").glob("*/result.json")):
        doc = json.loads(path.read_text())
        docs[doc["slide_id"]] = (doc["status"], doc["call"], doc["image"])
    return docs


@pytest.mark.parametrize("delay", [1.5, 4.0])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tiny_cohort, tiny_model, tmp_path, delay):
    slides = [str(s) for s in _slides(tiny_cohort, 3)]
    args = ["-q", "predict", *slides, "--model", str(tiny_model), "--workers", "0"]
    base = [sys.executable, "-m", "pipeline.cli", *args]
    subprocess.run([*base, "--out", str(tmp_path / "ref")], cwd=ROOT, check=True)
    proc = subprocess.Popen([*base, "--out", str(tmp_path / "run")], cwd=ROOT)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run([*base, "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert _fields(tmp_path / "run") == _fields(tmp_path / "ref")


def test_stale_temporaries_are_cleaned_at_start(cli, tiny_cohort, tiny_model, tmp_path):
    out = tmp_path / "out"
    junk = out / "slides" / "x" / ".result.json.abc.tmp"
    junk.parent.mkdir(parents=True)
    junk.write_text("half")
    os.utime(junk, (time.time() - 3600, time.time() - 3600))
    fresh = out / ".summary.csv.def.tmp"
    fresh.write_text("a live writer's")
    _predict(cli, _slides(tiny_cohort, 1), tiny_model, out)
    assert not junk.exists() and fresh.exists()


# -- bad options, configs and files ---------------------------------------------------------
def test_unwritable_output_is_a_usage_error(cli, tiny_cohort, tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _predict(cli, _slides(tiny_cohort, 1), tiny_model, blocker / "out")
    assert code == 2 and "choose another --out" in err
    code, err = cli("tile", _slides(tiny_cohort, 1)[0], "--out", blocker / "out")
    assert code == 2 and "cannot write" in err


@pytest.mark.parametrize(
    "option, needle",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
        (["--device", "tpu"], "--device"),
        (["--device", "cuda"], "no CUDA"),
        (["--prior", "nonsense"], "unknown prior"),
    ],
)
def test_bad_predict_options_stop_before_any_slide(
    cli, tiny_cohort, tiny_model, tmp_path, option, needle
):
    if option == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    out = tmp_path / "out"
    code, err = _predict(cli, _slides(tiny_cohort, 1), tiny_model, out, *option)
    assert code == 2 and needle in err
    assert not (out / "slides").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("--trainer.max_epochs=-3", "trainer.max_epochs"),
        ("--data.tile_px=0", "data.tile_px"),
        ("--data.target_mpp=-1", "data.target_mpp"),
        ("--data.classes=[1,2]", "data.classes"),
        ("--trainer.precision=7-bit", "trainer.precision"),
        ("--data.batch_size=0", "data.batch_size"),
        ("--model.aggregator=median_of_means", "model.aggregator"),
        ("--augment.stain_normalisation=reinhard", "augment.stain_normalisation"),
        ("--trainer.accelerator=gpu", "trainer.accelerator"),
    ],
)
def test_bad_config_values_stop_before_any_work(cli, tiny_cohort, tmp_path, override, key):
    if override.endswith("=gpu"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    run = tmp_path / "run"
    code, err = cli("train", "--config", "demo", f"--data.manifest={tiny_cohort / 'manifest.csv'}",
                    f"--out={run}", override)  # fmt: skip
    assert code == 2 and key in err
    assert not (run / "tiles").exists()


def test_limit_batches_keeps_integers(tiny_cohort):
    from pipeline.training.config import load_config

    config = load_config(
        "demo", [f"--data.manifest={tiny_cohort}", "--trainer.limit_train_batches=1"]
    )
    assert config.trainer.limit_train_batches == 1 and isinstance(
        config.trainer.limit_train_batches, int
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ("slide_id,marker,result\ns1,desmin,positive,extra\n", "more cells than the header"),
        ("slide_id,marker,intensity\ns1,desmin,strong\n", "needs a result column"),
        ("slide_id,marker,result\ns1,desmin,maybe\n", "line 2"),
        ("marker,result\ndesmin,positive\n", "slide_id"),
    ],
)
def test_bad_ihc_tables_are_named_errors(cli, tmp_path, text, needle):
    table = tmp_path / "ihc.csv"
    table.write_text(text)
    code, err = cli("ihc", "--ihc", table, "--slide", "s1")
    assert code == 2 and "ihc.csv" in err and needle in err


def test_declared_sizes_over_the_memory_budget_are_refused(cli, tiny_cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("FASCICLE_MEMORY_BUDGET_MB", "0.001")
    code, err = cli("tile", _slides(tiny_cohort, 1)[0], "--out", tmp_path / "t")
    assert code == 1 and "budget" in err and "FASCICLE_MEMORY_BUDGET_MB" in err


def test_resolution_and_tile_size_messages_name_the_right_option(cli, tiny_cohort, tmp_path):
    slide = _slides(tiny_cohort, 1)[0]
    code, err = cli("tile", slide, "--out", tmp_path / "a", "--slide-mpp", "1000")
    assert code == 1 and "correct the --slide-mpp value" in err
    code, err = cli("tile", slide, "--out", tmp_path / "b", "--tile-px", "0")
    assert code == 2 and "--tile-px: must be at least 16" in err and "overlap_px" not in err


def test_a_model_file_with_impossible_metadata_is_refused(cli, tiny_cohort, tiny_model, tmp_path):
    import torch

    payload = torch.load(tiny_model, weights_only=True)
    payload["hyper_parameters"]["tile_px"] = -96
    bad = tmp_path / "bad.ckpt"
    torch.save(payload, bad)
    code, err = _predict(cli, _slides(tiny_cohort, 1), bad, tmp_path / "out")
    assert code == 2 and "tile_px" in err


def test_a_folder_of_slides_is_tiled_slide_by_slide(cli, tiny_cohort, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for s in _slides(tiny_cohort, 2):
        shutil.copy(s, folder / s.name)
    code, _ = cli("tile", folder, "--out", tmp_path / "t", "--mpp", "1.0", "--tile-px", "64")
    assert code == 0 and len(list((tmp_path / "t" / "tiles").glob("*.h5"))) == 2


def test_messages_for_coarse_slides_and_pickles_point_to_the_fix(
    cli, dicom_wsi, tiny_model, tmp_path
):
    code, err = _predict(cli, [dicom_wsi], tiny_model, tmp_path / "out")
    assert code == 1 and "use a model trained at" in err and "--mpp" in err
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"format": "fascicle-model", "x": Payload()}, evil)
    code, err = _predict(cli, [dicom_wsi], evil, tmp_path / "out2")
    assert code == 2 and "weights_only=False" not in err and "run code" in err


def test_a_small_synthetic_cohort_still_has_a_validation_slide():
    from pipeline.synth.cohort import CohortParams, plan_cohort

    plans = plan_cohort(CohortParams(n_slides=6, seed=0), Path("cohort"))
    assert {p.split for p in plans} >= {"train", "val"}


def _coords(out: Path) -> dict:
    import h5py

    found = {}
    for path in sorted((out / "tiles").glob("*.h5")):
        with h5py.File(path, "r") as f:
            found[path.stem] = f["coords"][:].tolist()
    return found


def test_kill_9_of_tile_then_rerun_equals_an_uninterrupted_run(tiny_cohort, tmp_path):
    args = ["-q", "tile", "--manifest", str(tiny_cohort / "manifest.csv"), "--mpp", "1.0",
            "--tile-px", "64", "--workers", "2"]  # fmt: skip
    base = [sys.executable, "-m", "pipeline.cli", *args]
    subprocess.run([*base, "--out", str(tmp_path / "ref")], cwd=ROOT, check=True)
    proc = subprocess.Popen([*base, "--out", str(tmp_path / "run")], cwd=ROOT)
    time.sleep(3.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run([*base, "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True)
    assert again.returncode == 0 and b"Traceback" not in again.stderr
    assert _coords(tmp_path / "run") == _coords(tmp_path / "ref")
    assert len(_coords(tmp_path / "ref")) == 9
