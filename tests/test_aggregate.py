import numpy as np
import pytest

from pipeline.core.errors import UsageError
from pipeline.prediction.call import CallConfig
from pipeline.tiles.aggregate import (
    aggregate,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)

TILES = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])


def test_aggregators():
    np.testing.assert_allclose(aggregate(TILES, "mean"), TILES.mean(0))
    np.testing.assert_allclose(aggregate(TILES, "vote"), [0.75, 0.25, 1e-6 / (1 + 1e-6)], atol=1e-6)
    top = aggregate(TILES, "top_k", top_k_fraction=0.5)
    expected = np.array([0.85, 0.5, 0.1])
    np.testing.assert_allclose(top, expected / expected.sum())
    q = aggregate(TILES, "quantile", quantile=0.5)
    assert q.argmax() == 0 and q.sum() == pytest.approx(1)
    att = aggregate(TILES, "attention", attention=np.array([0, 0, 10.0, 0]))
    assert att.argmax() == 1  # attention on the one meningioma-like tile
    with pytest.raises(ValueError, match="one weight per tile"):
        aggregate(TILES, "attention")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(TILES, "median")


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, size=(4000, 3))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true])
    overconfident = apply_temperature(true, 0.4)
    before = expected_calibration_error(overconfident, labels)
    t = fit_temperature(overconfident[:2000], labels[:2000])
    after = expected_calibration_error(apply_temperature(overconfident[2000:], t), labels[2000:])
    assert t == pytest.approx(2.5, rel=0.15)
    assert after < before / 3
    assert after < 0.03


def test_temperature_one_is_identity():
    np.testing.assert_allclose(apply_temperature(TILES, 1.0), TILES / TILES.sum(1, keepdims=True))


def test_call_config_loads_and_rejects_unknown_keys(tmp_path):
    config = CallConfig.load()
    assert config.min_probability == 0.7 and config.aggregation == "model"
    bad = tmp_path / "calls.yaml"
    bad.write_text("min_probabilty: 0.8\n")
    with pytest.raises(UsageError, match="min_probabilty"):
        CallConfig.load(bad)
    bad.write_text("aggregation: median\n")
    with pytest.raises(UsageError, match="aggregation"):
        CallConfig.load(bad)
    bad.write_text("aggregation: top_k\n")
    assert CallConfig.load(bad).aggregator_for("mean") == "top_k"
    assert config.aggregator_for("quantile") == "quantile"
