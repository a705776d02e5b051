"""The words IHC reports use for results: filler words, positive / negative / focal /
equivocal words, compartments, "not done" phrases and the loss language of loss markers
(H3K27me3, INI1). ``pipeline.ihc.report`` reads results with them."""

STOP_WORDS = frozenset(
    [
        "is",
        "are",
        "was",
        "were",
        "be",
        "shows",
        "show",
        "showing",
        "showed",
        "with",
        "the",
        "of",
        "in",
        "tumour",
        "tumor",
        "tumoral",
        "cells",
        "cell",
        "neoplastic",
        "lesional",
        "staining",
        "stain",
        "stains",
        "stained",
        "but",
        "or",
        "nor",
        "immunoreactivity",
        "immunoreaction",
        "immunostaining",
        "expression",
        "immunostain",
        "immunohistochemistry",
        "ihc",
        "situ",  # "by in situ hybridization" (EBER): the method, not a result
        "hybridization",
        "hybridisation",
        "ish",
        "for",
        "to",
        "on",
        "by",
        "in:",
        "also",
        "both",
        "all",
    ]
)
POSITIVE = frozenset(
    [
        "yes",
        "p",
        "positive",
        "positivity",
        "pos",
        "pos.",
        "+",
        "++",
        "+++",
        "(++)",
        "(+++)",
        "1+",
        "2+",
        "3+",
        "reactive",
        "expressed",
        "present",
        "diffuse",
        "diffusely",
        "strong",
        "strongly",
        "moderate",
        "moderately",
        "extensive",
        "extensively",
        "intense",
        "intensely",
        "marked",
        "markedly",
        "immunoreactive",
        "immunopositive",
        "positively",
    ]
)
NEGATIVE = frozenset(
    [
        "no",
        "n",
        "0",
        "negative",
        "negativity",
        "neg",
        "neg.",
        "-",
        "(-)",
        "−",
        "–",
        "absent",
        "nonreactive",
        "non-reactive",
        "unreactive",
        "immunonegative",
        "negatively",
        "nil",
    ]
)
FOCAL = frozenset(
    [
        "reduced",
        "decreased",
        "diminished",
        "f",
        "(+)",  # the German-style "(+)": weakly / focally positive
        "focal",
        "focally",
        "patchy",
        "scattered",
        "partial",
        "partially",
        "rare",
        "occasional",
        "weak",
        "weakly",
        "heterogeneous",
        "heterogeneously",
        "multifocal",
        "(+/-)",
        "isolated",
        "few",
    ]
)
EQUIVOCAL = frozenset(
    [
        "equivocal",
        "indeterminate",
        "?",
        "±",
        "+/-",
        "inconclusive",
        "unclear",
        "non-diagnostic",
        "nondiagnostic",
        "questionable",
    ]
)
COMPARTMENTS = frozenset(
    [
        "nuclear",
        "membranous",
        "membrane",
        "cytoplasmic",
        "dot-like",
        "paranuclear",
        "perinuclear",
        "granular",
        "cytoplasm",
        "nucleus",
        "nuclei",
        "membranes",
    ]
)
ADVERBS = frozenset(
    {"weakly", "focally", "diffusely", "strongly", "moderately", "patchily", "partially",
     "faintly", "intensely", "variably", "multifocally", "heterogeneously", "weak", "focal",
     "diffuse", "strong", "moderate", "patchy", "partial", "faint", "intense", "variable"}
)  # fmt: skip
"""Words that can stand alone before "and" in "weakly and focally positive"."""
QUALIFIERS = COMPARTMENTS | {
    *("only", "cells", "areas", "tumour", "tumor", "in", "of", "%", "clone", "intensity"),
    *("done", "performed", "available", "follow", "evaluable", "expression", "pattern"),
}
NOT_PERFORMED = (
    *("not done", "not performed", "not available", "to follow", "pending", "not evaluable"),
    *("n/a", "na", "nd", "np", "not_performed", "failed"),
)
NEGATIVE_PHRASES = ("not expressed", "no staining", "no expression", "not detected", "not seen")
LOSS = {
    "positive": ("complete loss", "loss", "lost", "deficient", "absent", "completely lost"),
    "negative": (
        *("retained", "intact", "preserved", "expressed", "retention"),
        *("not lost", "no loss", "not deficient", "without loss"),
    ),
    "focal": (
        *("partial loss", "partially lost", "mosaic", "mosaic loss", "reduced"),
        *("subclonal loss", "geographic loss", "regional loss"),
    ),
}
