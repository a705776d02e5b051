import numpy as np
import pytest
import yaml

from pipeline.core.errors import UsageError
from pipeline.ihc.knowledge import DEFAULT_PATH, load_knowledge


def test_shipped_knowledge_base_is_complete_and_sourced():
    kb = load_knowledge()
    assert len(kb.entities) == 21 and len(kb.markers) == 53
    added = (
        "BCL2",
        "CD99",
        "CK7",
        "SS18_SSX",
        "OLIG2",
        "FLI1",
        "NKX2_2",
        "CD20",
        "CD3",
        "INI1_loss",
    )
    added += ("EBER", "p63", "synaptophysin", "CDK4")
    kinds = ("DATA", "ESTIMATE", "CONFLICTING")
    assert all(kb.sources[(e, m)].startswith(kinds) for e in kb.entities for m in added)
    later = ("ewing_sarcoma", "pecoma", "schwannoma", "lymphoma", "ebv_smt", "dicer1_sarcoma")
    for entity in (*later, "melanocytoma", "rhabdoid_tumor"):
        assert all(kb.sources[(entity, m)].startswith(kinds) for m in kb.markers)
    for variant in kb.variants:  # a variant's numbers are sourced like the table's
        assert variant.p and all(
            s.startswith(("DATA", "ESTIMATE")) for s in variant.sources.values()
        )
    assert kb.resolve_marker("NKX3-1") == "NKX3_1" and kb.resolve_marker("LCA") == "CD45"
    assert kb.resolve_marker("NKX2-2") == "NKX2_2" and kb.resolve_marker("Fli-1") == "FLI1"
    assert np.isfinite(kb.p_positive).all()
    assert ((kb.p_positive >= 0) & (kb.p_positive <= 1)).all()
    assert all(kb.sources[(e, m)] for e in kb.entities for m in kb.markers)
    assert kb.sources[("leiomyosarcoma", "desmin")].startswith("DATA")
    assert set(kb.image_classes) == {"leiomyosarcoma", "meningioma", "other_sarcoma"}
    assert kb.image_class_of["metastatic_melanoma"] is None
    for name in ("dural_any", "dural_high_grade", "soft_tissue", "uniform"):
        prior = kb.prior(name)
        assert prior.sum() == pytest.approx(1) and (prior > 0).all()
    assert kb.p("leiomyosarcoma", "desmin") == 0.8
    assert kb.p("plasmacytoma", "desmin") == 0.01  # clipped from 0.005


def _broken(tmp_path, edit):
    doc = yaml.safe_load(DEFAULT_PATH.read_text())
    edit(doc)
    path = tmp_path / "kb.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["likelihoods"]["leiomyosarcoma"]["desmin"].update(p=1.4), "not a probability"),
        (lambda d: d["likelihoods"]["leiomyosarcoma"].pop("SMA"), "no probability for SMA"),
        (
            lambda d: d["likelihoods"]["leiomyosarcoma"].update(CD56={"p": 0.1}),
            "unknown marker 'CD56'",
        ),
        (lambda d: d["groups"]["myogenic"]["markers"].append("Ki67"), "unknown marker 'Ki67'"),
        (
            lambda d: d["entities"]["leiomyosarcoma"].update(image_class="lms"),
            "not in image_classes",
        ),
        (
            lambda d: d["priors"]["dural_any"]["weights"].update(glioma=0.1),
            "unknown entity 'glioma'",
        ),
        (lambda d: d["markers"]["SMA"]["aliases"].append("desmin"), "names both"),
        (lambda d: d.update(default_prior="nope"), "default_prior"),
        (lambda d: d["variants"].update(glioma={"x": {"share": 0.1}}), "unknown entity 'glioma'"),
        (lambda d: d["variants"]["mpnst"]["epithelioid"].update(share=1.2), "share 1.2"),
        (
            lambda d: d["variants"]["mpnst"]["epithelioid"]["p"].update(CD56={"p": 0.5}),
            "bad marker or p 'CD56'",
        ),
        (lambda d: d["markers"]["SMA"].update(molecular="desmin"), "no molecular marker"),
        (lambda d: d.update(molecular_clip=[0.5, 0.1]), "molecular_clip"),
    ],
)
def test_invalid_knowledge_bases_are_rejected_with_the_reason(tmp_path, edit, message):
    with pytest.raises(UsageError, match=message):
        load_knowledge(_broken(tmp_path, edit))


def test_aliases_resolve():
    kb = load_knowledge()
    for name, key in [
        ("hCaldesmon", "h_caldesmon"),
        ("Caldesmon", "h_caldesmon"),
        ("h-caldesmon", "h_caldesmon"),
        ("TTF-1", "TTF1"),
        ("mart-1", "MelanA"),
        ("STAT6", "STAT6_nuclear"),
        ("nope", None),
    ]:
        assert kb.resolve_marker(name) == key
