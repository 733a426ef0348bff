"""The anatomy table: label names -> display colours and SNOMED CT codes.

One table for every output that names or colours a label: the Slicer ``.seg.nrrd`` and ``.ctbl``
(``outputs``), the DICOM SEG (``dicom_seg``) and the preview mosaic (``liverseg.reports.case_report``). Names are
matched after normalisation (``'Liver Tumour'`` == ``liver_tumour``); names not in the table get
distinct palette colours and the generic Tissue code.
"""
from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

RGB = tuple[int, int, int]


def _key(name: str) -> str:
    """Normalised label name for look-ups: ``'Liver Tumour'`` -> ``'liver_tumour'``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


# Colours: 3D Slicer's GenericAnatomyColors table (Slicer3:2010_GenericAnatomyColors), which is also
# what Slicer's terminology and TotalSegmentator's Slicer exports recommend for these structures.
_VEIN: RGB = (0, 151, 206)
_ARTERY: RGB = (216, 101, 79)
_MASS: RGB = (144, 238, 144)

# Segmentation property category codes (DICOM CID 7150) and type codes (SNOMED CT).
_CAT_ANATOMY = ("91723000", "Anatomical Structure")
_CAT_TISSUE = ("85756007", "Tissue")
_CAT_MORPH = ("49755003", "Morphologically Abnormal Structure")


class _Known:
    __slots__ = ("category", "color", "type_code")

    def __init__(self, color: RGB, category: tuple[str, str], type_code: tuple[str, str]):
        self.color, self.category, self.type_code = color, category, type_code


_KNOWN: dict[str, _Known] = {}


def _add(names: str, color: RGB, category: tuple[str, str], code: str, meaning: str) -> None:
    for name in names.split():
        _KNOWN[name] = _Known(color, category, (code, meaning))


_add("liver", (221, 130, 101), _CAT_ANATOMY, "10200004", "Liver")
_add("tumour tumor liver_tumour liver_tumor tumours tumors neoplasm liver_lesion hepatic_tumour "
     "hepatic_tumor", _MASS, _CAT_MORPH, "108369006", "Neoplasm")
_add("lesion lesions", (205, 205, 100), _CAT_MORPH, "52988006", "Lesion")
_add("mass", _MASS, _CAT_MORPH, "4147007", "Mass")
_add("cyst", (205, 205, 100), _CAT_MORPH, "367643001", "Cyst")
_add("spleen", (157, 108, 162), _CAT_ANATOMY, "78961009", "Spleen")
_add("kidney kidneys", (185, 102, 83), _CAT_ANATOMY, "64033007", "Kidney")
_add("kidney_right right_kidney", (185, 102, 83), _CAT_ANATOMY, "9846003", "Right kidney")
_add("kidney_left left_kidney", (212, 126, 104), _CAT_ANATOMY, "18639004", "Left kidney")
_add("gallbladder gall_bladder", (139, 150, 98), _CAT_ANATOMY, "28231008", "Gallbladder")
_add("pancreas", (249, 180, 111), _CAT_ANATOMY, "15776009", "Pancreas")
_add("stomach", (216, 132, 105), _CAT_ANATOMY, "69695003", "Stomach")
_add("duodenum", (255, 253, 229), _CAT_ANATOMY, "38848004", "Duodenum")
_add("colon", (204, 168, 143), _CAT_ANATOMY, "71854001", "Colon")
_add("small_bowel small_intestine", (205, 167, 142), _CAT_ANATOMY, "30315005", "Small intestine")
_add("esophagus oesophagus", (211, 171, 143), _CAT_ANATOMY, "32849002", "Esophagus")
_add("urinary_bladder bladder", (222, 154, 132), _CAT_ANATOMY, "89837001", "Urinary bladder")
_add("aorta", (224, 97, 76), _CAT_ANATOMY, "15825003", "Aorta")
_add("inferior_vena_cava ivc", _VEIN, _CAT_ANATOMY, "64131007", "Inferior vena cava")
_add("portal_vein portal_vein_and_splenic_vein", (0, 122, 171), _CAT_ANATOMY, "32764006", "Portal vein")
_add("hepatic_vein hepatic_veins", (0, 147, 202), _CAT_ANATOMY, "8993003", "Hepatic vein")
_add("vessel vessels hepatic_vessel hepatic_vessels blood_vessel", _VEIN, _CAT_ANATOMY, "59820001",
     "Blood vessel")
_add("vein veins", _VEIN, _CAT_ANATOMY, "29092000", "Vein")
_add("artery arteries hepatic_artery", _ARTERY, _CAT_ANATOMY, "51114001", "Artery")
_add("lung lungs", (197, 165, 145), _CAT_ANATOMY, "39607008", "Lung")
_add("heart", (206, 110, 84), _CAT_ANATOMY, "80891009", "Heart")
_add("bone bones", (241, 214, 145), _CAT_TISSUE, "272673000", "Bone")
_add("muscle muscles", (192, 104, 88), _CAT_TISSUE, "91727004", "Muscle")
_add("fat", (230, 220, 70), _CAT_TISSUE, "248153007", "Fat")

# Slicer's "region_N" colours, then golden-angle hues: distinct colours for names not listed above.
_PALETTE: tuple[RGB, ...] = (
    (185, 232, 61), (0, 226, 255), (251, 159, 255), (230, 169, 29), (0, 194, 113), (104, 160, 249),
    (221, 108, 158), (137, 142, 0), (230, 70, 0), (0, 147, 0), (0, 147, 248), (231, 0, 206),
    (129, 78, 0), (0, 116, 0), (0, 0, 255), (157, 0, 0))


def _palette(index: int) -> RGB:
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def _too_close(color: RGB, used: list[RGB], min_distance: float = 40.0) -> bool:
    return any(float(np.linalg.norm(np.subtract(color, u))) < min_distance for u in used)


def label_colors(label_names: Sequence[str]) -> dict[str, RGB]:
    """Display colour (0-255 RGB) of every label name, background black.

    Known structures get 3D Slicer's standard anatomy colours (liver 221,130,101 as in Slicer and
    TotalSegmentator); other names get distinct colours from a fixed palette. The result depends only
    on the list of names, and no two foreground labels share (or nearly share) a colour: a known
    colour already taken by an earlier label makes the later one fall back to the palette.
    """
    colors: dict[str, RGB] = {}
    used: list[RGB] = []
    next_palette = 0
    for index, name in enumerate(label_names):
        if index == 0 or _key(name) == "background":
            colors[name] = (0, 0, 0)
            continue
        known = _KNOWN.get(_key(name))
        color = known.color if known is not None else None
        while color is None or _too_close(color, used):
            color = _palette(next_palette)
            next_palette += 1
        colors[name] = color
        used.append(color)
    return colors


def resolve_colors(label_names: Sequence[str], colors: dict[str, Any] | None) -> dict[str, RGB]:
    resolved = label_colors(label_names)
    for name, value in (colors or {}).items():
        if name not in resolved:
            raise InputError(f"colour given for label {name!r}, which is not one of the label names "
                             f"{list(label_names)}")
        rgb = tuple(int(v) for v in value)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise InputError(f"colour {tuple(value)} of label {name!r} is not three integers 0-255")
        resolved[name] = rgb  # type: ignore[assignment]
    return resolved


def segment_codes(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(category, type) SNOMED codes of a label; generic Tissue/Tissue when the name is unknown."""
    known = _KNOWN.get(_key(name))
    return (known.category, known.type_code) if known is not None else (_CAT_TISSUE, _CAT_TISSUE)


def slicer_terminology(name: str) -> str:
    (cat_code, cat_meaning), (type_code, type_meaning) = segment_codes(name)
    # Slicer's own terminology files name these two categories "Anatomical Structure" (123037004) and
    # "Morphologically Altered Structure"; use its spelling so that Slicer finds the entry.
    if cat_code == _CAT_ANATOMY[0]:
        cat_code, cat_meaning = "123037004", "Anatomical Structure"
    elif cat_code == _CAT_MORPH[0]:
        cat_meaning = "Morphologically Altered Structure"
    return ("Segmentation category and type - DICOM master list"
            f"~SCT^{cat_code}^{cat_meaning}~SCT^{type_code}^{type_meaning}~^^"
            "~Anatomic codes - DICOM master list~^^~^^")


__all__ = ["RGB", "label_colors", "resolve_colors", "segment_codes", "slicer_terminology"]
