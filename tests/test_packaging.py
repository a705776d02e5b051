"""A wheel built from the repository works outside the clone: subpackages and the built-in
configs are installed, and ``fascicle ihc`` and ``fascicle predict`` run from a new venv in a
temporary directory (its dependencies borrowed from this environment, not reinstalled)."""

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
WHERE = "import pipeline, models; print(pipeline.__file__, models.__file__)"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(work.glob("fascicle-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("pipeline/synth/render.py", "pipeline/configs/calls.yaml",
                   "pipeline/configs/ihc/knowledge.yaml", "pipeline/configs/demo.yaml",
                   "models/meta.py", "pipeline/viewer/static/viewer.js",
                   "pipeline/viewer/static/index.html",
                   "pipeline/viewer/static/viewer.css"):  # fmt: skip
        assert needed in names, f"{needed} missing from the wheel"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", PURELIB],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    # dependencies come from this environment; fascicle itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "fascicle"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_wheel_runs_ihc_and_predict_outside_the_clone(
    wheel_venv, tmp_path, tiny_model, tiny_cohort
):
    where = subprocess.run(
        [wheel_venv / "bin" / "python", "-c", WHERE],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(ROOT) not in where and str(wheel_venv) in where, where
    ihc = _run(wheel_venv, tmp_path, "ihc", "--panel", "desmin+ h-caldesmon+ SMA- STAT6-", "--json")
    assert ihc.returncode == 0, ihc.stderr
    assert json.loads(ihc.stdout)["differential"][0]["entity"] == "leiomyosarcoma"
    slide = sorted((tiny_cohort / "slides").glob("*.tiff"))[0]
    out = tmp_path / "out"
    predict = _run(wheel_venv, tmp_path, "-q", "predict", str(slide), "--model", str(tiny_model),
                   "--out", str(out), "--workers", "0")  # fmt: skip
    assert predict.returncode == 0, predict.stderr
    result = json.loads((out / "slides" / slide.stem / "result.json").read_text())
    assert result["status"] == "ok" and (out / "report.html").exists()
