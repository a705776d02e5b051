import logging

import pytest

from pipeline.core.errors import InvalidResolutionError, MissingResolutionError
from pipeline.wsi.resolution import resolve_mpp

OPENSLIDE = {"openslide.mpp-x": "0.2521", "openslide.mpp-y": "0.2519"}
TIFF_CM = {
    "tiff.XResolution": "20000",
    "tiff.YResolution": "20000",
    "tiff.ResolutionUnit": "centimeter",
}
POWER = {"openslide.objective-power": "20"}


def test_override_wins_over_everything():
    r = resolve_mpp("s.svs", {**OPENSLIDE, **TIFF_CM, **POWER}, override=0.3)
    assert (r.mpp, r.source) == (0.3, "override")


def test_openslide_before_tiff_tags_before_power():
    assert resolve_mpp("s", {**OPENSLIDE, **TIFF_CM, **POWER}).source == "openslide"
    r = resolve_mpp("s", {**TIFF_CM, **POWER})
    assert (r.source, r.mpp) == ("tiff-tags", pytest.approx(0.5))
    inch = {
        "tiff.XResolution": "101600",
        "tiff.YResolution": "101600",
        "tiff.ResolutionUnit": "inch",
    }
    assert resolve_mpp("s", inch).mpp == pytest.approx(0.25)


def test_objective_power_is_an_assumption_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        r = resolve_mpp("slide.ndpi", POWER)
    assert (r.source, r.mpp) == ("objective-power", 0.5)
    assert "slide.ndpi" in caplog.text and "--slide-mpp" in caplog.text


def test_no_metadata_is_an_error_naming_file_and_fix():
    with pytest.raises(MissingResolutionError) as err:
        resolve_mpp("/data/case7.tiff", {})
    assert "/data/case7.tiff" in str(err.value)
    assert "--slide-mpp" in str(err.value) and "mpp column" in str(err.value)


def test_screen_dpi_tags_are_rejected_and_next_source_used():
    dpi72 = {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}
    assert resolve_mpp("s", {**dpi72, **POWER}).source == "objective-power"
    with pytest.raises(MissingResolutionError, match=r"352\.7"):
        resolve_mpp("s", dpi72)


def test_xy_disagreement_is_rejected():
    bad = {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.30"}
    with pytest.raises(MissingResolutionError, match="disagree"):
        resolve_mpp("s", bad)
    ok = {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.26"}
    assert resolve_mpp("s", ok).mpp == pytest.approx(0.255)


@pytest.mark.parametrize("value", [0.0, -1.0, 0.01, 80.0, float("nan")])
def test_implausible_override_is_an_error(value):
    with pytest.raises(InvalidResolutionError, match="plausible"):
        resolve_mpp("s", OPENSLIDE, override=value)
