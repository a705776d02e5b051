"""Property tests of the IHC differential (hypothesis): random panels, random additions."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ihc.differential import fuse
from pipeline.ihc.knowledge import load_knowledge
from pipeline.ihc.panel import parse_panel
from pipeline.ihc.results import MarkerResult, Panel

KB = load_knowledge()
MARKERS = sorted(KB.markers)
STATES = ("positive", "negative", "focal")
SIGN = {"positive": "+", "negative": "-", "focal": " focal"}
LOSS_WORDS = {"positive": " lost", "negative": " retained", "focal": " partial loss"}

panels = st.dictionaries(st.sampled_from(MARKERS), st.sampled_from(STATES), max_size=8)


def _panel(results: dict[str, str]) -> Panel:
    return Panel(results={m: MarkerResult(m, s) for m, s in results.items()})


@settings(max_examples=300, deadline=None)
@given(panels, st.sampled_from(MARKERS), st.sampled_from(STATES), st.sampled_from(KB.entities))
def test_a_supporting_result_never_lowers_its_entity(results, marker, state, entity):
    """Supporting = the result is likelier under the entity (given the panel so far) than
    under the posterior-weighted alternatives: adding it must not lower the entity."""
    if marker in results:
        return
    prior = "uniform"
    before = fuse(_panel(results), prior=prior, kb=KB)
    after = fuse(_panel({**results, marker: state}), prior=prior, kb=KB)
    i = KB.entities.index(entity)
    gain = after.ihc_loglik - before.ihc_loglik  # log P(result | panel so far, entity)
    others = np.delete(before.posterior, i)
    if others.sum() <= 0:
        return
    alt = np.dot(others / others.sum(), np.exp(np.delete(gain, i)))
    if np.exp(gain[i]) >= alt:
        assert after.posterior[i] >= before.posterior[i] - 1e-12


@settings(max_examples=100, deadline=None)
@given(panels, st.randoms(use_true_random=False))
def test_order_and_spelling_never_matter(results, rng):
    if not results:
        return
    items = list(results.items())
    rng.shuffle(items)
    text = ", ".join(
        f"{_spelling(m, rng)}{(LOSS_WORDS if KB.markers[m].loss_marker else SIGN)[s]}"
        for m, s in items
    )
    np.testing.assert_allclose(
        fuse(parse_panel(text, KB), kb=KB).posterior,
        fuse(_panel(results), kb=KB).posterior,
        rtol=1e-9,
        atol=1e-12,
    )


def _spelling(marker: str, rng) -> str:
    names = [KB.markers[marker].display, *KB.markers[marker].aliases]
    names = [n for n in names if not n.rstrip().endswith(("loss", ")"))]
    return rng.choice(names)


WORDS = {
    "positive": ("positive", "strongly positive", "diffusely positive", "immunoreactive"),
    "negative": ("negative", "immunonegative", "not immunoreactive"),
    "focal": ("focally positive", "weakly positive", "patchy", "focal"),
}
SIGNS = {"positive": ("+", "(+)", "pos"), "negative": ("-", "(-)", "neg"), "focal": ("focal",)}
STAINED = [m for m in MARKERS if not KB.markers[m].loss_marker]


def _result(state: str, rng, signs: bool = True) -> str:
    return rng.choice([*WORDS[state], *(SIGNS[state] if signs else ())])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(STAINED), min_size=2, max_size=2, unique=True),
    st.lists(st.sampled_from(STATES), min_size=2, max_size=2),
    st.integers(0, 8),
    st.randoms(use_true_random=False),
)
def test_report_sentence_shapes_read_as_meant(markers, states, shape, rng):
    """Two markers in the sentence shapes case reports use, any spelling, any result
    wording: every marker gets the result the sentence gives it (a result carried from
    "positive for A" never reaches B, which has its own)."""
    (a, b), (sa, sb) = markers, states
    na, nb = _spelling(a, rng), _spelling(b, rng)
    text, expected = {
        0: (f"{na} {_result(sa, rng)}; {nb}: {_result(sb, rng)}", (sa, sb)),
        1: (f"{na} and {nb} {_result(sa, rng, signs=False)}", (sa, sa)),
        2: (
            f"{_result(sa, rng, False)} for {na}, but {_result(sb, rng, False)} for {nb}",
            (sa, sb),
        ),
        3: (
            f"{na} was {_result(sa, rng, False)}, whereas {nb} was {_result(sb, rng, False)}",
            (sa, sb),
        ),
        4: (f"{_result(sa, rng, False)} for {na} and {nb}", (sa, sa)),
        5: (f"{na} ({_result(sa, rng)}), {nb} ({_result(sb, rng)})", (sa, sb)),
        6: (f"- {na}: {_result(sa, rng)}\n- {nb}: {_result(sb, rng)}", (sa, sb)),
        7: (f"{_result(sa, rng, False)} for {na}, {nb} {_result(sb, rng)}", (sa, sb)),
        8: (
            f"{_result(sa, rng, False)} for {na}, and {nb} was {_result(sb, rng, False)}",
            (sa, sb),
        ),
    }[shape]
    panel = parse_panel(text, KB)
    assert {m: r.state for m, r in panel.results.items()} == dict(
        zip((a, b), expected, strict=True)
    ), text
    assert not panel.unknown, text


LOSS_MARKERS = [m for m in MARKERS if KB.markers[m].loss_marker]
LOSS_PHRASES = {
    "positive": ("{m} lost", "loss of {m}", "{m} expression was lost", "{m}: complete loss"),
    "negative": ("{m} retained", "retained {m}", "{m} expression was retained", "{m}: intact"),
    "focal": ("{m} partial loss", "mosaic loss of {m}", "{m}: mosaic", "{m} reduced"),
}


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(LOSS_MARKERS),
    st.sampled_from(STATES),
    st.sampled_from(STAINED),
    st.sampled_from(STATES),
    st.randoms(use_true_random=False),
)
def test_loss_marker_sentences_read_as_meant(loss, loss_state, other, state, rng):
    """Loss and retention as reports write them, beside a stained marker: "lost" is the
    loss marker's positive, "retained" its negative, never turned round."""
    phrase = rng.choice(LOSS_PHRASES[loss_state]).format(m=_spelling(loss, rng))
    text = f"{_spelling(other, rng)} {_result(state, rng)}; {phrase}"
    panel = parse_panel(text, KB)
    assert {m: r.state for m, r in panel.results.items()} == {other: state, loss: loss_state}, text
