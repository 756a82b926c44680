"""Label conventions: which label values make up the whole tumour (WT), tumour core (TC) and enhancing
tumour (ET), and which value each region is written back as.

BraTS is evaluated on the three nested regions, but every dataset encodes them in labels of its own:

* ``brats2021`` (BraTS 2017-2022): 1 necrotic core, 2 oedema, 4 enhancing.
* ``brats2023``: 1 necrotic core, 2 oedema, 3 enhancing.
* ``brats2013`` (BraTS 2013-2015): 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing.
* ``msd`` (Medical Segmentation Decathlon, Task01_BrainTumour): 1 oedema, 2 non-enhancing, 3 enhancing.

Other datasets describe theirs by region definitions (a layout file's ``regions``, or an nnU-Net
``dataset.json`` with region-based labels), or by label names (``dataset.json``), from which
:func:`from_label_names` reads the regions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

REGION_NAMES = ("WT", "TC", "ET")


class ConventionError(ValueError):
    """A label convention that cannot be used (unknown name, regions that do not nest)."""


@dataclasses.dataclass(frozen=True)
class LabelConvention:
    """Label values of one dataset and how they make the nested regions WT ⊇ TC ⊇ ET.

    ``write`` is the label each predicted region is written as: (WT but not TC, TC but not ET, ET) —
    predictions go back to disk in the dataset's own labels.
    """

    name: str
    wt: tuple[int, ...]
    tc: tuple[int, ...]
    et: tuple[int, ...]
    write: tuple[int, int, int]
    title: str = ""

    def __post_init__(self) -> None:
        wt, tc, et = set(self.wt), set(self.tc), set(self.et)
        if not et or not et <= tc <= wt or 0 in wt:
            raise ConventionError(
                f"label convention {self.name!r}: regions must nest as ET ⊆ TC ⊆ WT, non-empty, "
                f"without 0 (got WT={sorted(wt)}, TC={sorted(tc)}, ET={sorted(et)})"
            )

    @property
    def values(self) -> tuple[int, ...]:
        """Every label value the convention allows, background included."""
        return tuple(sorted({0, *self.wt}))

    @property
    def display_name(self) -> str:
        return self.title or self.name

    def regions(self, seg: np.ndarray) -> np.ndarray:
        """Labels -> nested regions [..., 3] (WT, TC, ET)."""
        seg = np.asarray(seg)
        return np.stack([np.isin(seg, part) for part in (self.wt, self.tc, self.et)], axis=-1)

    def labels(self, regions: np.ndarray) -> np.ndarray:
        """Regions [..., 3] -> uint8 labels, read hierarchically so the result is always consistent."""
        regions = np.asarray(regions)
        wt = regions[..., 0].astype(bool)
        tc = wt & regions[..., 1].astype(bool)
        et = tc & regions[..., 2].astype(bool)
        labels = np.zeros(regions.shape[:-1], dtype=np.uint8)
        labels[wt] = self.write[0]
        labels[tc] = self.write[1]
        labels[et] = self.write[2]
        return labels


KNOWN: dict[str, LabelConvention] = {
    c.name: c
    for c in (
        LabelConvention("brats2021", (1, 2, 4), (1, 4), (4,), (2, 1, 4), "BraTS 2021"),
        LabelConvention("brats2023", (1, 2, 3), (1, 3), (3,), (2, 1, 3), "BraTS 2023"),
        # TC-but-not-ET is written as necrosis (1): a prediction cannot tell necrosis from non-enhancing.
        LabelConvention("brats2013", (1, 2, 3, 4), (1, 3, 4), (4,), (2, 1, 4), "BraTS 2013"),
        LabelConvention("msd", (1, 2, 3), (2, 3), (3,), (1, 2, 3), "MSD Task01"),
    )
}

Convention = str | LabelConvention


def resolve(convention: Convention) -> LabelConvention:
    """A convention by name (one of :data:`KNOWN`) or as given."""
    if isinstance(convention, LabelConvention):
        return convention
    if convention not in KNOWN:
        raise ConventionError(f"unknown label convention {convention!r} (expected one of {list(KNOWN)})")
    return KNOWN[convention]


def from_regions(name: str, regions: Mapping[str, Sequence[int]]) -> LabelConvention:
    """A convention from explicit definitions {"WT": [...], "TC": [...], "ET": [...]} (any case)."""
    given = {key.upper(): value for key, value in regions.items()}
    missing = [r for r in REGION_NAMES if r not in given]
    if missing or len(given) != 3:
        raise ConventionError(f"{name}: regions need exactly WT, TC and ET (got {sorted(given)})")
    try:
        wt, tc, et = (tuple(sorted({int(v) for v in _as_list(given[r])})) for r in REGION_NAMES)
    except (TypeError, ValueError):
        raise ConventionError(f"{name}: region values must be integer labels (got {dict(given)})") from None
    only = lambda outer, inner: min(set(outer) - set(inner), default=min(outer))  # noqa: E731
    return LabelConvention(name, wt, tc, et, (only(wt, tc), only(tc, et), min(et)))


def _as_list(value: int | Sequence[int]) -> list[int]:
    return [value] if isinstance(value, int | float | str) else list(value)


_OEDEMA = ("edema", "oedema", "ed", "snfh")
_NECROSIS = ("necro", "ncr", "net", "cyst")


def _role(label_name: str) -> str:
    """background | wt | tc | et | oedema | necrosis, from a label's name in a dataset.json."""
    words = re.sub(r"[^a-z]+", " ", label_name.lower()).split()
    if any(w in ("background", "bg") for w in words):
        return "background"
    if "non" in words or any(w.startswith("nonenhanc") for w in words):
        return "necrosis"
    if any(w.startswith("enhanc") for w in words) or words == ["et"]:
        return "et"
    if any(w in ("whole", "wt", "complete") for w in words):
        return "wt"
    if any(w in ("core", "tc") for w in words):
        return "tc"
    if any(w in _OEDEMA for w in words):
        return "oedema"
    if any(w.startswith(p) for w in words for p in _NECROSIS):
        return "necrosis"
    raise ConventionError(f"label {label_name!r}: cannot tell which tumour region it belongs to")


def from_label_names(name: str, labels: Mapping[str, int | Sequence[int]]) -> LabelConvention:
    """A convention from a dataset.json's labels {name: value or [values]}.

    Region-based entries (lists, as nnU-Net writes them: "whole tumor": [1, 2, 3]) define WT/TC/ET
    directly; otherwise each label is classed by its name (oedema; necrosis or non-enhancing; enhancing)
    and WT = all tumour labels, TC = the non-oedema ones, ET = the enhancing ones.
    """
    roles: dict[str, set[int]] = {}
    for label_name, value in labels.items():
        try:
            values = {int(v) for v in _as_list(value)}
        except (TypeError, ValueError):
            raise ConventionError(f"label {label_name!r}: value {value!r} is not an integer label") from None
        roles.setdefault(_role(label_name), set()).update(values)
    roles.pop("background", None)
    if "wt" in roles or "tc" in roles:  # region-based
        regions = {"WT": roles.get("wt", set()), "TC": roles.get("tc", set()), "ET": roles.get("et", set())}
        return from_regions(name, {k: sorted(v) for k, v in regions.items()})
    et = roles.get("et", set())
    tc = et | roles.get("necrosis", set())
    wt = tc | roles.get("oedema", set())
    return from_regions(name, {"WT": sorted(wt), "TC": sorted(tc), "ET": sorted(et)})
