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
        "whereas",
        "while",
        "or",
        "nor",
        "immunoreactivity",
        "reactivity",
        "labelling",
        "labeling",
        "immunolabelling",
        "immunolabeling",
        "a",
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
        *("that", "which", "had", "has", "have", "any", "immunohistochemically"),
        *("immunohistochemical", "immunostains", "immunostainings", "highlighted", "highlights"),
        *("displayed", "exhibited", "demonstrated", "revealed", "detected", "identified"),
        *(
            "seen",
            "observed",
            "noted",
            "found",
            "there",
        ),  # "EMA was not detected": the "not" decides
        *("markers", "marker", "antibodies", "profile", "panel"),  # "Positive markers: A, B"
        *("pathological", "pathologic", "histopathological", "histopathologic", "histological"),
        *("fish", "rt-pcr", "pcr", "ngs", "sequencing", "break-apart", "probe", "molecular"),
        *("testing", "test", "next-generation", "dna", "rna", "assay", "confirmed", "showing"),
        *("cytogenetic", "cytogenetics", "using", "fluorescence", "fluorescent"),
        *("histologic", "evaluation", "examination", "analysis", "study", "studies", "findings"),
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
        "immunopositivity",
        "labelled",
        "labeled",
        "decorated",
        "restricted",  # "kappa light chain restricted": the clone makes kappa
        "restriction",
        "majority",
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
        "overexpression",
        "overexpressed",
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
        "(−)",
        "(–)",
        "−",
        "–",
        "absent",
        "nonreactive",
        "non-reactive",
        "unreactive",
        "immunonegative",
        "immunonegativity",
        "negatively",
        "nil",
        "wild-type",
        "wildtype",
    ]
)
FOCAL = frozenset(
    [
        "reduced",
        "decreased",
        "diminished",
        "f",
        "focal",
        "focally",
        "patchy",
        "scattered",
        "partial",
        "partially",
        "rare",
        "minority",
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
    *("approximately", "about", "around", "roughly", "nearly", "almost", "up", "at", "least"),
    *("less", "more", "fewer", "greater", "than", "over", "under", "below", "above"),
    *("spindle", "spindled", "epithelioid", "component", "foci", "population", "plasma"),
    *("epithelial", "glial", "stromal", "mesenchymal", "sarcomatous", "giant", "lymphoid"),
    *("gliomatous", "glial-appearing", "rhabdoid"),
}
GRADED_WEAK = "(+)"
"""Weakly positive where the panel grades with "++" / "+++" (the German and Chinese scales:
(+) weak, ++ moderate, +++ strong); plainly positive otherwise ("SMA (+), S-100 (-)")."""
NEGATING = frozenset(["lack", "lacks", "lacked", "lacking", "devoid", "absence"])
"""Words before markers that say they are negative ("lacked desmin", "lack of PR")."""
CONTEXT = frozenset(
    [
        *("vessel", "vessels", "vascular", "endothelial", "endothelium", "control"),
        *("background", "lymphocytes", "histiocytes", "macrophages", "entrapped"),
    ]
)
"""Words naming cells other than the tumour's: "CD34 (vessels positive)" is an internal
control, "CD34 highlighted the vessels only" a negative tumour."""
NOT_PERFORMED = (
    *("not done", "not performed", "not available", "to follow", "pending", "not evaluable"),
    *("n/a", "na", "nd", "np", "not_performed", "failed"),
)
NEGATIVE_PHRASES = (
    *("not expressed", "no staining", "no expression", "not detected", "not seen"),
    *("wild-type", "wild type", "wildtype"),
)
MOLECULAR = frozenset(
    [
        *("rearrangement", "rearranged", "translocation", "translocated", "fusion", "fused"),
        *("amplification", "amplified", "mutation", "mutated", "mutant", "pathogenic"),
    ]
)
"""A molecular finding named as present ("SS18 rearrangement", "MDM2 amplification"): a
positive result when nothing else in the phrase says otherwise ("no SS18 rearrangement",
"MDM2 not amplified", "EWSR1 rearrangement: negative")."""
METHODS = frozenset(["fish", "rt-pcr", "pcr", "ngs", "sequencing", "break-apart", "molecular"])
"""Molecular methods: a result read by one of them is the molecular test's, not the stain's."""
NOT_THEN = (
    *("positive", "reactive", "immunoreactive", "immunopositive", "stained", "detected"),
    *("expressed", "labelled", "labeled", "identified", "seen", "present", "observed"),
    *("demonstrated", "decorated", "amplified", "rearranged", "mutated", "translocated"),
)
"""Words that "not" before them turns negative ("not labelled", "not immunoreactive")."""
TUMOUR = frozenset(["tumour", "tumor", "neoplastic", "lesional", "tumoral"])
LOSS = {
    "positive": (
        *("complete loss", "loss", "lost", "deficient", "absent", "completely lost"),
        *("deletion", "deleted", "homozygous deletion", "biallelic inactivation", "inactivated"),
    ),
    "negative": (
        *("retained", "intact", "preserved", "expressed", "retention"),
        *("not lost", "no loss", "not deficient", "without loss", "no deletion", "not deleted"),
    ),
    "focal": (
        *("partial loss", "partially lost", "mosaic", "mosaic loss", "reduced"),
        *("subclonal loss", "geographic loss", "regional loss"),
    ),
}
