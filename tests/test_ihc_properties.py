"""Property tests of the IHC differential (hypothesis): random panels, random additions."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ihc.differential import fuse
from pipeline.ihc.knowledge import load_knowledge
from pipeline.ihc.panel import MarkerResult, Panel, parse_panel

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
