import copy
import itertools

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.ihc.differential import format_summary, fuse, next_stains, summarise
from pipeline.ihc.knowledge import Prior, load_knowledge
from pipeline.ihc.likelihood import group_leads, marker_terms, panel_loglik
from pipeline.ihc.panel import parse_panel
from pipeline.ihc.results import MarkerResult, Panel
from pipeline.prediction.call import CallConfig, decide

CASE = (
    "desmin+ h-caldesmon+ vimentin+ EMA- PR- GFAP- TTF-1- calcitonin- Melan-A- HMB45- SMA- "
    "CD34- S100-"
)
HALF = {"leiomyosarcoma": 0.5, "meningioma": 0.5, "other_sarcoma": 0.0}


def test_worked_case_leiomyosarcoma_first_with_the_right_evidence_and_next_stains():
    diff = fuse(parse_panel(CASE), HALF)
    ranked = dict(diff.ranked())
    assert diff.ranked()[0][0] == "leiomyosarcoma"
    assert ranked["leiomyosarcoma"] > 0.5  # the seed case's acceptance figure
    # the smooth-muscle class: EBV-associated smooth muscle tumours share the profile (EBER tells)
    assert ranked["leiomyosarcoma"] + ranked["ebv_smt"] > 0.75
    assert ranked["meningioma_g3_anaplastic"] < ranked["leiomyosarcoma"] / 5
    assert ranked["solitary_fibrous_tumor"] < 0.01
    evidence = {ev.marker: ev for ev in diff.evidence("leiomyosarcoma")}
    support = sorted((ev for ev in evidence.values() if ev.llr > 0), key=lambda ev: -ev.llr)
    assert {support[0].marker, support[1].marker} == {"desmin", "h_caldesmon"}
    sma = evidence["SMA"]
    assert sma.direction == "against" and not sma.decisive and sma.p_result < 0.1
    suggested = {s.marker for s in next_stains(diff)}
    assert suggested & {"myogenin", "MyoD1_nuclear"}
    assert suggested & {"STAT6_nuclear", "SSTR2A"}
    # EBER tells leiomyosarcoma from an EBV-associated smooth muscle tumour
    assert "EBER" in suggested
    # the IHC alone (no image) leaves rhabdomyosarcoma as the desmin+ competitor
    alone = fuse(parse_panel(CASE))
    assert [e for e, _ in alone.ranked()[:2]] == ["leiomyosarcoma", "rhabdomyosarcoma"]
    top3 = [s.marker for s in next_stains(alone, top=3)]
    assert top3[0] == "myogenin" and "MyoD1_nuclear" not in top3  # one stain per group
    assert "TLE1" in top3  # DICER1-mutant intracranial sarcoma: desmin+, myogenin mostly -, TLE1+
    assert "STAT6_nuclear" in {s.marker for s in next_stains(alone)}


def test_posterior_is_normalised_and_prior_only_without_evidence():
    kb = load_knowledge()
    diff = fuse()
    np.testing.assert_allclose(diff.posterior, kb.prior())
    for prior in kb.priors:
        d = fuse(parse_panel(CASE), HALF, prior=prior)
        assert d.posterior.sum() == pytest.approx(1.0) and (d.posterior >= 0).all()


def test_posterior_monotone_in_a_markers_likelihood_ratio():
    kb = copy.deepcopy(load_knowledge())  # never edit the shared, cached one
    panel = parse_panel("desmin+")
    i = kb.entities.index("leiomyosarcoma")
    j = kb.marker_index("desmin")
    previous = -1.0
    for p in (0.1, 0.3, 0.5, 0.8, 0.95):
        kb.p_positive[i, j] = p
        value = float(fuse(panel, kb=kb).posterior[i])
        assert value > previous
        previous = value


def test_marker_order_does_not_matter():
    markers = ["desmin+", "h-caldesmon+", "SMA-", "EMA-", "S100 focal", "CD34-"]
    reference = fuse(parse_panel(" ".join(markers)), HALF).posterior
    for order in itertools.islice(itertools.permutations(markers), 0, 720, 37):
        np.testing.assert_allclose(fuse(parse_panel(" ".join(order)), HALF).posterior, reference)


def test_correlated_stains_count_once_with_fixed_weights():
    kb = load_knowledge()
    panel = parse_panel("desmin+ h-caldesmon+ calponin+ SMA+")
    terms = marker_terms(kb, panel.performed.values())
    naive = sum(ll for _, _, ll in terms)
    tempered = panel_loglik(kb, panel.performed.values())
    i, j = kb.entities.index("leiomyosarcoma"), kb.entities.index("meningioma_g3_anaplastic")
    assert 0 < tempered[i] - tempered[j] < naive[i] - naive[j]
    assert sorted(w for _, w, _ in terms) == [0.5, 0.5, 0.5, 1.0]
    alone = marker_terms(kb, parse_panel("h-caldesmon+").performed.values())
    assert alone[0][1] == {r.marker: w for r, w, _ in terms}["h_caldesmon"]  # fixed weights
    leads = set(group_leads(kb).values())
    other = marker_terms(kb, parse_panel("desmin+ EMA- S100- CD31- STAT6+").performed.values())
    assert all(
        (w == 1.0) == (r.marker in leads or kb.group_of(r.marker) is None) for r, w, _ in other
    )


def test_focal_is_a_softened_positive_and_equivocal_is_uninformative():
    i = load_knowledge().entities.index("solitary_fibrous_tumor")
    pos = fuse(parse_panel("STAT6+")).posterior[i]
    focal = fuse(parse_panel("STAT6 focal")).posterior[i]
    neg = fuse(parse_panel("STAT6-")).posterior[i]
    assert pos > focal > neg
    np.testing.assert_allclose(fuse(parse_panel("STAT6 equivocal")).posterior, fuse().posterior)


def test_next_stain_breaks_a_planted_tie():
    kb = copy.deepcopy(load_knowledge())
    kb.priors["tie"] = Prior(
        "tie", "planted", {"solitary_fibrous_tumor": 1.0, "meningioma_g1_2": 1.0}
    )
    tied = fuse(Panel(), prior="tie", kb=kb)
    assert sorted(tied.posterior)[-2:] == [0.5, 0.5]
    best = next_stains(tied, top=1)[0]
    assert best.marker == "STAT6_nuclear"  # 0.97 vs 0.01: the sharpest split of the two
    assert {best.separates[0], best.separates[2]} == {"solitary_fibrous_tumor", "meningioma_g1_2"}
    assert best.entropy_reduction > 0.8  # nearly the whole bit


def test_outside_scope_entities_are_neutral_to_the_image_and_flagged():
    diff = fuse(parse_panel("S100+ SOX10+ MelanA+ HMB45+"), {"leiomyosarcoma": 1.0})
    top = diff.ranked()[0][0]
    assert top == "metastatic_melanoma" and not diff.in_scope(top)
    call = decide(diff, CallConfig())
    assert call.label == "metastatic_melanoma" and call.outside_scope


def test_conflicting_image_and_ihc_make_the_call_indeterminate():
    panel = parse_panel("STAT6+ CD34+ desmin- h-caldesmon- EMA-")
    image = {"leiomyosarcoma": 0.97, "meningioma": 0.02, "other_sarcoma": 0.01}
    diff, alone = fuse(panel, image), fuse(panel)
    call = decide(diff, CallConfig(), image_probs=image, ihc_only=alone)
    assert call.indeterminate and any("conflict" in r for r in call.reasons)
    low = decide(
        fuse(None, {"leiomyosarcoma": 0.4, "meningioma": 0.35, "other_sarcoma": 0.25}), CallConfig()
    )
    assert low.indeterminate and "probability" in low.reasons[0]
    few = decide(fuse(parse_panel(CASE), HALF), CallConfig(), n_tiles=3)
    assert few.indeterminate and "3 tissue tiles" in few.reasons[0]


HALF_TEXT = "leiomyosarcoma=0.5,meningioma=0.5"


def test_an_image_that_says_nothing_never_conflicts_with_the_ihc(capsys):
    """0.5 / 0.5 is no evidence: the dural prior's lean to meningioma is not the image's."""
    panel = "desmin+ SMA+ h-caldesmon+ calponin+ S100- EMA- STAT6-"
    assert main(["ihc", "--panel", panel, "--image-probs", HALF_TEXT, "--json"]) == 0
    import json

    call = json.loads(capsys.readouterr().out)["call"]
    assert not any("conflict" in r for r in call["reasons"])
    assert (
        main(["ihc", "--panel", panel, "--image-probs", "leiomyosarcoma=0.03,meningioma=0.97"]) == 0
    )
    assert "image favours meningioma" in capsys.readouterr().out


def test_ihc_cli_table_and_json(capsys):
    assert main(["ihc", "--panel", CASE, "--image-probs", "leiomyosarcoma=0.5,meningioma=0.5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("call: leiomyosarcoma")
    assert "myogenin" in out and "atypical" in out
    assert main(["ihc", "--panel", CASE, "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["differential"][0]["entity"] == "leiomyosarcoma"
    assert main(["ihc", "--panel", "desmin"]) == 2
    assert main(["ihc", "--panel", "desmin+", "--image-probs", "lms=0.9"]) == 2
    assert main(["ihc", "--panel", "desmin+", "--prior", "nope"]) == 2


def test_ihc_cli_reads_a_report_file(tmp_path, capsys):
    report = tmp_path / "report.txt"
    report.write_text("IMMUNOHISTOCHEMISTRY\n1. Desmin: positive\n2. S\u2011100: negative\n")
    assert main(["ihc", "--panel", f"@{report}", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["panel"] == {"desmin": "positive", "S100": "negative"}
    assert doc["markers_used"] == "2 of 2 markers used"
    assert main(["ihc", "--panel", f"@{tmp_path / 'missing.txt'}"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    scanned = tmp_path / "report.pdf"
    scanned.write_bytes(b"%PDF-1.4\n\xff\xfe\x00\x93 binary")
    assert main(["ihc", "--panel", f"@{scanned}"]) == 2
    err = capsys.readouterr().err
    assert "report.pdf" in err and "UTF-8" in err


def test_result_objects_work_without_parsing():
    panel = Panel(results={"desmin": MarkerResult("desmin", "positive")})
    assert fuse(panel).ranked()[0][0] in {
        "meningioma_g3_anaplastic",
        "rhabdomyosarcoma",
        "leiomyosarcoma",
    }


def test_a_variant_makes_its_entity_a_mixture_of_rows():
    """Epithelioid MPNST: INI1 loss with diffuse S100 and no keratin or EMA fits the variant's
    joint profile, which the entity's averaged row cannot express."""
    kb = load_knowledge()
    text = "S100 diffusely positive, SOX10+, INI1 lost, H3K27me3 retained, EMA-, AE1/AE3-"
    results = parse_panel(text).performed.values()
    i = kb.entities.index("mpnst")
    (variant,) = [v for v in kb.variants if v.entity == "mpnst"]
    rows, owner, log_share, keys = kb.components()
    own, var = np.flatnonzero(owner == i)
    assert keys[own] is None and keys[var] == variant.key
    by_row = [
        sum(w * float(ll[k]) for _, w, ll in marker_terms_on(kb, results, rows)) for k in (own, var)
    ]
    expected = np.logaddexp(log_share[own] + by_row[0], log_share[var] + by_row[1])
    assert panel_loglik(kb, results)[i] == pytest.approx(expected)
    assert by_row[1] > by_row[0] + np.log(20)  # the variant explains this panel far better
    diff = fuse(parse_panel(text), prior="uniform")
    assert diff.variant_name("mpnst") == "epithelioid MPNST"
    assert diff.p_positive[i, kb.marker_index("SOX10")] > kb.p("mpnst", "SOX10")
    assert "Jo" in {ev.marker: ev.source for ev in diff.evidence("mpnst")}["S100"]
    rows = {r["entity"]: r for r in summarise(diff, top=len(kb.entities))["differential"]}
    assert (
        rows["mpnst"]["variant"] == "epithelioid MPNST"
        and rows["leiomyosarcoma"]["variant"] is None
    )
    assert "Malignant peripheral nerve sheath tumour (epithelioid MPNST)" in format_summary(
        summarise(diff, top=len(kb.entities))
    )
    plain = fuse(parse_panel("S100+, EMA-"), prior="uniform")
    assert plain.variant_name("mpnst") is None


def marker_terms_on(kb, results, rows):
    """(result, weight, log P(result | row)) for the given rows (the mixture's components)."""
    from pipeline.ihc.likelihood import marker_loglik, marker_weight

    leads = group_leads(kb)
    return [(r, marker_weight(kb, r.marker, leads), marker_loglik(kb, r, rows)) for r in results]


def test_explain_prints_rows_with_kind_and_source(capsys):
    assert main(["ihc", "--explain", "SOX10"]) == 0
    out = capsys.readouterr().out
    assert "mpnst" in out and "DATA" in out and "ESTIMATE" in out and "Kang" in out
    assert main(["ihc", "--explain", "mpnst"]) == 0
    assert "epithelioid" in capsys.readouterr().out  # the variant's rows
    assert main(["ihc", "--explain", "FOO7"]) == 2


def test_a_molecular_result_is_read_weighed_and_never_suggested_as_a_stain():
    kb = load_knowledge()
    assert kb.p("leiomyosarcoma", "SS18_rearrangement") == kb.molecular_clip[0] < kb.clip[0]
    stains = "vimentin+, CD99+, BCL2+, EMA-, AE1/AE3-, CD34-, S100 focal"
    before = fuse(parse_panel(stains, kb), kb=kb)
    after = fuse(parse_panel(stains + "; FISH: SS18 rearranged", kb), kb=kb)
    assert after.ranked()[0][0] == "synovial_sarcoma" != before.ranked()[0][0]
    assert not {s.marker for s in next_stains(before, top=60)} & {
        m for m in kb.markers if kb.markers[m].is_molecular
    }
