import pytest

from pipeline.ihc.knowledge import load_knowledge
from pipeline.ihc.panel import IHCError, parse_panel
from pipeline.ihc.tables import read_ihc_csv

CASE = (
    "desmin+ h-caldesmon+ vimentin+ EMA- PR- GFAP- TTF-1- calcitonin- Melan-A- HMB45- SMA- "
    "CD34- S100-"
)


def states(panel):
    return {k: r.state for k, r in panel.results.items()}


def test_the_worked_case_panel():
    got = states(parse_panel(CASE))
    assert got["desmin"] == got["h_caldesmon"] == got["vimentin"] == "positive"
    for marker in (
        "EMA",
        "PR",
        "GFAP",
        "TTF1",
        "calcitonin",
        "MelanA",
        "HMB45",
        "SMA",
        "CD34",
        "S100",
    ):
        assert got[marker] == "negative"
    assert len(got) == 13


@pytest.mark.parametrize(
    "text, marker, state",
    [
        ("hCaldesmon+", "h_caldesmon", "positive"),
        ("Caldesmon pos", "h_caldesmon", "positive"),
        ("h caldesmon -", "h_caldesmon", "negative"),
        ("smooth muscle actin neg", "SMA", "negative"),
        ("STAT6 focal", "STAT6_nuclear", "focal"),
        ("STAT-6 patchy", "STAT6_nuclear", "focal"),
        ("S100 (+)", "S100", "positive"),  # "(+)" is weak only on a graded scale
        ("CD34 +/-", "CD34", "equivocal"),
        ("SOX10 −", "SOX10", "negative"),
        ("AE1/AE3+", "panCK_AE1AE3", "positive"),
        ("Melan A negative", "MelanA", "negative"),
        ("PR 30%", "PR", "positive"),
        ("PR 8%", "PR", "focal"),
        ("PR 2%", "PR", "negative"),
        ("PR H=150", "PR", "positive"),
        ("MyoD1 na", "MyoD1_nuclear", "not_performed"),
        ("H3K27me3 lost", "H3K27me3_loss", "positive"),
        ("H3K27me3 retained", "H3K27me3_loss", "negative"),
        ("H3K27me3-", "H3K27me3_loss", "positive"),  # a negative stain means loss
        ("H3K27me3 mosaic", "H3K27me3_loss", "focal"),
    ],
)
def test_aliases_and_result_synonyms(text, marker, state):
    assert states(parse_panel(text)) == {marker: state}


def test_unknown_markers_are_reported_not_dropped():
    panel = parse_panel("desmin+ Ki-67 20%, CD56+")
    assert set(panel.results) == {"desmin"}
    assert panel.unknown == [] and [n.split()[0] for n in panel.noted] == ["Ki-67", "CD56"]
    assert "grade hint" in panel.noted[0] and panel.usage() == "1 of 3 markers used"
    odd = parse_panel("desmin+ FOOBAR7 positive")
    assert odd.unknown == ["FOOBAR7 positive"] or "FOOBAR7" in " ".join(odd.unknown)
    assert any("FOOBAR7" in w for w in odd.warnings)


@pytest.mark.parametrize(
    "text, message",
    [
        ("desmin", "no result for 'desmin'"),
        ("desmin+ SMA", "no result for 'SMA'"),
        ("+ desmin+", "has no marker"),
        ("desmin+ desmin-", "given twice"),
        ("PR 130%", "outside 0-100"),
    ],
)
def test_malformed_panels_are_clear_errors(text, message):
    with pytest.raises(IHCError, match=message):
        parse_panel(text)


def test_long_csv_with_percent_and_hscore(tmp_path):
    path = tmp_path / "ihc.csv"
    path.write_text(
        "slide_id,marker,result,percent,hscore\n"
        "s1,Desmin,positive,80,\n"
        "s1,SMA,,3,\n"
        "s1,PR,,,150\n"
        "s2,hCaldesmon,neg,,\n"
        "s2,ERG,+,,\n"
    )
    panels = read_ihc_csv(path)
    assert states(panels["s1"]) == {"desmin": "positive", "SMA": "negative", "PR": "positive"}
    assert panels["s1"].results["desmin"].percent == 80
    assert states(panels["s2"]) == {"h_caldesmon": "negative", "ERG": "positive"}


def test_wide_csv(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("slide_id,desmin,h-caldesmon,STAT6,Ki67\ns1,+,focal,,15%\ns2,-,-,positive,\n")
    panels = read_ihc_csv(path)
    assert states(panels["s1"]) == {"desmin": "positive", "h_caldesmon": "focal"}
    assert panels["s1"].unknown == [] and panels["s1"].noted[0].startswith("Ki-67")
    assert states(panels["s2"]) == {
        "desmin": "negative",
        "h_caldesmon": "negative",
        "STAT6_nuclear": "positive",
    }


def test_csv_errors_name_every_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "slide_id,marker,result,percent\ns1,desmin,maybe,\n,SMA,+,\ns2,EMA,+,abc\ns3,,+,\n"
    )
    with pytest.raises(IHCError) as err:
        read_ihc_csv(path)
    text = str(err.value)
    assert "4 problem(s)" in text
    for expected in (
        "line 2",
        "'maybe'",
        "line 3: empty slide_id",
        "line 4",
        "'abc'",
        "line 5: empty marker",
    ):
        assert expected in text
    no_id = tmp_path / "noid.csv"
    no_id.write_text("case,marker,result\nx,desmin,+\n")
    with pytest.raises(IHCError, match="slide_id"):
        read_ihc_csv(no_id)


def test_synthetic_cohort_ihc_files_parse(tmp_path):
    import numpy as np

    from pipeline.synth.cohort import CohortParams, plan_cohort, sample_ihc

    kb = load_knowledge()
    rows = ["slide_id,marker,result,percent"]
    for plan in plan_cohort(CohortParams(n_slides=30), tmp_path):
        for r in sample_ihc(plan, kb, np.random.default_rng(0)):
            rows.append(f"{plan.slide_id},{r['marker']},{r['result']},{r['percent']}")
    path = tmp_path / "ihc.csv"
    path.write_text("\n".join(rows) + "\n")
    panels = read_ihc_csv(path, kb)
    assert len(panels) == 30 and all(not p.unknown for p in panels.values())


def _phrasings() -> list[tuple[str, str, str]]:
    import csv
    from pathlib import Path

    path = Path(__file__).parent / "data" / "ihc_phrasings.csv"
    with open(path, newline="") as fh:
        return [(r["phrase"], r["marker"], r["state"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("phrase, marker, state", _phrasings())
def test_report_phrasings_read_as_written(phrase, marker, state):
    """Over 250 ways reports write one result, each with the parse a pathologist means."""
    panel = parse_panel(phrase)
    assert {k: r.state for k, r in panel.results.items()} == {marker: state}, phrase
    assert not panel.unknown and not panel.warnings, phrase


def test_the_phrasing_fixture_is_large_and_covers_every_result():
    rows = _phrasings()
    assert len(rows) >= 200
    assert {s for *_, s in rows} == {"positive", "negative", "focal", "equivocal", "not_performed"}


@pytest.mark.parametrize(
    "text",
    [
        "EMA negative, focally positive",
        "desmin negative (focal strong staining)",
        "+ desmin",
        "desmin",
        "SMA maybe",
    ],
)
def test_unreadable_or_contradictory_results_are_named_errors(text):
    with pytest.raises(IHCError, match=r"fragment|marker"):
        parse_panel(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "immunoreactive to HMB-45 and S-100 protein but not to EMA",
            {"HMB45": "positive", "S100": "positive", "EMA": "negative"},
        ),
        ("positive for desmin but not for SMA", {"desmin": "positive", "SMA": "negative"}),
        ("desmin positive, not SMA", {"desmin": "positive", "SMA": "negative"}),
        ("positive for CD34 but not STAT6", {"CD34": "positive", "STAT6_nuclear": "negative"}),
        (
            "strongly and diffusely positive for EMA and Vimentin, focally immunoreactive for "
            "SMA and GFAP; diffuse loss of nuclear INI1 expression",
            {"EMA": "positive", "vimentin": "positive", "SMA": "focal", "GFAP": "focal",
             "INI1_loss": "positive"},
        ),
    ],
)  # fmt: skip
def test_a_not_belongs_to_the_marker_after_it(text, expected):
    """ "A and B but not C": B keeps the shared result, C is negative (never the reverse)."""
    panel = parse_panel(text)
    assert {k: r.state for k, r in panel.results.items()} == expected
    assert not panel.unknown


def test_a_marker_without_its_own_result_never_borrows_the_next_one_past_unread_words():
    """ "intense vimentin staining; rare GFAP positive areas" once read vimentin as focal
    (GFAP's result): "intense" was no result word and the rest of the fragment was dropped."""
    panel = parse_panel("intense vimentin staining; rare GFAP positive areas")
    assert {k: r.state for k, r in panel.results.items()} == {
        "vimentin": "positive",
        "GFAP": "focal",
    }
    with pytest.raises(IHCError, match="no result for 'vimentin'"):  # not across a ";"
        parse_panel("glorious vimentin staining; GFAP positive")
    # a held-out papillary meningioma: "vimentin intense" once read *negative*, from the list
    # after the semicolon
    panel = parse_panel("vimentin intense; S-100, EMA, keratin and desmin negative")
    assert (
        panel.results["vimentin"].state == "positive" and panel.results["EMA"].state == "negative"
    )
    with pytest.raises(IHCError, match="could not read: glorious"):  # nor past unread words
        parse_panel("vimentin glorious staining, GFAP positive")
    assert parse_panel("Positive: desmin, h-caldesmon; Negative: EMA, PR").results["PR"].state == (
        "negative"
    )
    assert parse_panel("CD31 membranous staining, diffuse").results["CD31"].state == "positive"


@pytest.mark.parametrize("text", ["diffuse loss of desmin", "SMA lost", "desmin: loss"])
def test_loss_of_a_stained_marker_is_refused_not_read_as_positive(text):
    """Only loss markers (H3K27me3, INI1) are read as lost; "diffuse loss of desmin" once
    read as desmin positive (the adverb), now it is a named error."""
    with pytest.raises(IHCError, match="loss"):
        parse_panel(text)


def test_signs_followed_by_qualifiers_never_flip():
    panel = parse_panel("STAT6 - nuclear +, CD34 - , S100 - focal")
    assert {k: r.state for k, r in panel.results.items()} == {
        "STAT6_nuclear": "positive",
        "CD34": "negative",
        "S100": "focal",
    }


def test_pairs_as_a_notebook_holds_them():
    from pipeline.ihc.tables import panel_from_pairs

    panel = panel_from_pairs([("hCaldesmon", "strongly positive"), ("SMA", "(-)"), ("Ki67", "30%")])
    assert {k: r.state for k, r in panel.results.items()} == {
        "h_caldesmon": "positive",
        "SMA": "negative",
    }
    assert panel.noted and panel.usage() == "2 of 3 markers used"


@pytest.mark.parametrize(
    "text",
    [
        "neither desmin nor SMA positive",
        "neither desmin nor SMA was expressed",
        "the tumour expressed neither desmin nor SMA",
        "showed neither desmin nor SMA",
    ],
)
def test_neither_nor_reads_every_marker_negative(text):
    assert states(parse_panel(text)) == {"desmin": "negative", "SMA": "negative"}


@pytest.mark.parametrize(
    "text", ["neither desmin nor SMA negative", "neither desmin nor SMA", "neither INI1 nor X lost"]
)
def test_neither_nor_that_could_flip_is_refused(text):
    with pytest.raises(IHCError, match="neither"):
        parse_panel(text)


def _sentences() -> list[dict]:
    import csv
    from pathlib import Path

    with open(
        Path(__file__).parent / "data" / "ihc_sentences.csv", newline="", encoding="utf-8"
    ) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("row", _sentences(), ids=lambda r: r["sentence"][:60])
def test_case_report_sentences_read_whole(row):
    """Whole sentences as case reports write them: every marker with the result meant,
    what could not be read listed verbatim, noted markers (Ki-67, p53...) counted."""
    panel = parse_panel(row["sentence"])
    expected = dict(p.split("=") for p in row["expected"].split("; ") if p)
    assert states(panel) == expected
    assert " | ".join(panel.unknown) == row["unread"]
    assert len(panel.noted) == int(row["noted"])


@pytest.mark.parametrize(
    "text",
    [
        "CD34 positive in vessels",  # about other cells: the tumour's result is not written
        "SMA not diffusely positive",  # a "not" that is no negative
        "desmin, strong SMA staining",  # desmin never borrows SMA's result before SMA
        "in situ hybridization for kappa and lambda showed kappa restriction",  # not lambda's
    ],
)
def test_results_about_other_cells_or_a_stray_not_are_refused(text):
    with pytest.raises(IHCError):
        parse_panel(text)


def test_plus_in_brackets_is_weak_only_on_a_graded_scale():
    assert states(parse_panel("SMA (+), S-100 (-)")) == {"SMA": "positive", "S100": "negative"}
    assert states(parse_panel("desmin (+++), SMA (+)")) == {"desmin": "positive", "SMA": "focal"}


def test_a_waiting_marker_records_both_fragments():
    panel = parse_panel("desmin, SMA and caldesmon positive")
    assert panel.results["desmin"].raw == "desmin … caldesmon positive"


@pytest.mark.parametrize(
    ("cell", "state"),
    [("positive but weak", "focal"), ("positive, focal", "focal"), ("(+)", "positive")],
)
def test_a_table_cell_is_read_whole(cell, state):
    from pipeline.ihc.tables import interpret

    assert interpret("PR", cell, load_knowledge(), "row 2").state == state


def test_a_table_cell_that_reads_both_ways_is_an_error():
    from pipeline.ihc.tables import interpret

    with pytest.raises(IHCError, match="row 2"):
        interpret("PR", "negative, focally positive", load_knowledge(), "row 2")


def test_the_reports_conclusion_is_noted_not_read_and_never_hides_a_marker():
    panel = parse_panel("positive for STAT6 and CD34, consistent with solitary fibrous tumour")
    assert states(panel) == {"STAT6_nuclear": "positive", "CD34": "positive"}
    assert not panel.unknown and "conclusion" in panel.warnings[0]
    later = parse_panel("positive for STAT6, consistent with SFT, and EMA was negative")
    assert later.results["EMA"].state == "negative" and not later.unknown
    assert states(parse_panel("consistent with SMA positivity")) == {"SMA": "positive"}
