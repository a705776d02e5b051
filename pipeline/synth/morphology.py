"""Morphology of each rendered entity, in physical units (µm), and how difficulty blends it.

Nuclear area fraction (π·a·b·density ≈ 0.26) and mean staining are kept similar across
entities so the classes differ in shape and architecture, not in colour.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Morphology:
    """How a tumour looks at 0.5 µm/px. Lengths are half-axes in µm."""

    architecture: str
    """``fascicles`` | ``whorls`` | ``storiform`` | ``patternless``."""
    fascicle_um: float = 300.0
    wide_angles: bool = False
    """Fascicles cross at about 90° (leiomyosarcoma)."""
    nucleus_a: float = 7.0
    nucleus_b: float = 3.0
    blunt: float = 2.0
    """Superellipse exponent: 2 is an ellipse, 3-4 a cigar with blunt ends."""
    size_cv: float = 0.2
    density: float = 0.003
    """Nuclei per µm² of tumour."""
    jitter_deg: float = 20.0
    h_amp: float = 1.0
    h_cv: float = 0.15
    e_level: float = 0.5
    fibre_density: float = 0.004
    fibre_len: float = 15.0
    fibre_width: float = 0.8
    fibre_amp: float = 0.15
    pseudo_inclusion: float = 0.0
    mitosis: float = 0.005
    giant: float = 0.0
    vacuole: float = 0.0
    whorls_per_mm2: float = 0.0
    psammoma_per_mm2: float = 0.0
    staghorn_per_mm2: float = 0.0
    necrosis: float = 0.0
    """Fraction of the tissue that is necrotic."""


GENERIC = Morphology(architecture="patternless")
"""What every entity drifts towards as difficulty rises: a featureless spindle/oval tumour."""

ENTITIES: dict[str, Morphology] = {
    "leiomyosarcoma": Morphology(
        architecture="fascicles",
        fascicle_um=360,
        wide_angles=True,
        nucleus_a=10.0,
        nucleus_b=2.0,
        blunt=3.5,
        size_cv=0.25,
        density=0.0042,
        jitter_deg=9,
        h_amp=1.0,
        e_level=0.55,
        fibre_density=0.012,
        fibre_len=24,
        fibre_width=0.9,
        fibre_amp=0.25,
        mitosis=0.02,
        vacuole=0.15,
        necrosis=0.05,
    ),
    "meningioma_g1_2": Morphology(
        architecture="whorls",
        nucleus_a=5.5,
        nucleus_b=4.0,
        blunt=2.0,
        size_cv=0.15,
        density=0.0038,
        jitter_deg=25,
        h_amp=0.85,
        e_level=0.5,
        fibre_density=0.003,
        fibre_len=8,
        fibre_amp=0.08,
        pseudo_inclusion=0.08,
        mitosis=0.002,
        whorls_per_mm2=28,
        psammoma_per_mm2=6,
    ),
    "meningioma_g3_anaplastic": Morphology(
        architecture="whorls",
        nucleus_a=5.0,
        nucleus_b=3.6,
        blunt=2.0,
        size_cv=0.35,
        density=0.0047,
        jitter_deg=35,
        h_amp=1.0,
        h_cv=0.25,
        e_level=0.45,
        fibre_density=0.003,
        fibre_len=8,
        fibre_amp=0.08,
        pseudo_inclusion=0.04,
        mitosis=0.03,
        giant=0.01,
        whorls_per_mm2=10,
        psammoma_per_mm2=1,
        necrosis=0.1,
    ),
    "solitary_fibrous_tumor": Morphology(
        architecture="patternless",
        nucleus_a=6.0,
        nucleus_b=2.4,
        blunt=2.5,
        size_cv=0.2,
        density=0.0046,
        jitter_deg=180,
        h_amp=1.0,
        e_level=0.55,
        fibre_density=0.006,
        fibre_len=30,
        fibre_width=2.0,
        fibre_amp=0.35,
        staghorn_per_mm2=5,
    ),
    "synovial_sarcoma": Morphology(
        architecture="fascicles",
        fascicle_um=180,
        nucleus_a=5.5,
        nucleus_b=2.2,
        blunt=2.5,
        size_cv=0.08,
        density=0.0065,
        jitter_deg=12,
        h_amp=1.05,
        e_level=0.42,
        fibre_density=0.002,
        fibre_len=10,
        fibre_amp=0.08,
        mitosis=0.01,
    ),
    "undiff_pleomorphic_sarcoma": Morphology(
        architecture="storiform",
        nucleus_a=8.0,
        nucleus_b=4.0,
        blunt=2.0,
        size_cv=0.5,
        density=0.0026,
        jitter_deg=20,
        h_amp=1.1,
        h_cv=0.35,
        e_level=0.55,
        fibre_density=0.005,
        fibre_len=14,
        fibre_amp=0.15,
        mitosis=0.03,
        giant=0.05,
        necrosis=0.12,
    ),
    "mpnst": Morphology(
        architecture="fascicles",
        fascicle_um=300,
        nucleus_a=7.0,
        nucleus_b=1.8,
        blunt=2.0,
        size_cv=0.2,
        density=0.0052,
        jitter_deg=20,
        h_amp=1.05,
        e_level=0.45,
        fibre_density=0.004,
        fibre_len=14,
        fibre_amp=0.12,
        mitosis=0.02,
        necrosis=0.08,
    ),
}

_BLENDED = (
    "nucleus_a",
    "nucleus_b",
    "blunt",
    "size_cv",
    "jitter_deg",
    "fibre_density",
    "fibre_len",
    "fibre_width",
    "fibre_amp",
    "e_level",
    "h_amp",
)
_FADED = (
    "pseudo_inclusion",
    "vacuole",
    "giant",
    "whorls_per_mm2",
    "psammoma_per_mm2",
    "staghorn_per_mm2",
)


def morphology_for(entity: str, difficulty: float) -> Morphology:
    """The entity's morphology moved towards ``GENERIC`` by ``difficulty`` (0 easy, 1 hard).

    At 1 the measurable features are 60% of the way to the generic tumour and the special
    features (whorls, psammoma bodies, vacuoles, giant nuclei) are at 40%.
    """
    base = ENTITIES[entity]
    t = 0.6 * difficulty
    changes = {n: getattr(base, n) + (getattr(GENERIC, n) - getattr(base, n)) * t for n in _BLENDED}
    changes |= {n: getattr(base, n) * (1 - t) for n in _FADED}
    # keep the nuclear area fraction where the entity had it
    area = base.nucleus_a * base.nucleus_b * base.density
    changes["density"] = area / (changes["nucleus_a"] * changes["nucleus_b"])
    return replace(base, **changes)
