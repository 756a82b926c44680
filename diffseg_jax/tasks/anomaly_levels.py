"""Several noise levels, and several noise draws, of one diffusion detector at test: their maps averaged.

A lesion that still shows through the noise at a low level is reconstructed with the healthy tissue and
missed; a high level hides it but blurs healthy detail into false positives. The field combines partial
diffusion at several levels (and averages reconstructions from several noise draws) to keep both.
`anomaly.levels` ("250,499,750") names the levels, each set in the field the detector reads (AnoDDPM's
`start_step`, the patch detectors' `test_step`); `anomaly.ensemble` the draws per level.
"""

from __future__ import annotations

import ml_collections

LEVEL_FIELDS = {"anoddpm": "start_step", "pddpm": "test_step", "mddpm": "test_step", "uma_ddpm": "test_step"}


def levels(config: ml_collections.ConfigDict) -> list[int]:
    """`anomaly.levels` as integers ([] = the detector's own single level)."""
    raw = config.anomaly.get("levels", "") or ""
    text = raw if isinstance(raw, str) else ",".join(str(v) for v in raw)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"anomaly.levels={raw!r}: expected integers such as '250,499,750'") from None
    if values and config.method not in LEVEL_FIELDS:
        known = ", ".join(LEVEL_FIELDS)
        raise ValueError(f"anomaly.levels: {config.method} has no noise level (only {known} have one)")
    steps = int(config.diffusion.num_steps) if "diffusion" in config else 0
    bad = [v for v in values if not 0 <= v < steps]
    if bad:
        raise ValueError(f"anomaly.levels={raw!r}: {bad} outside 0..{steps - 1}")
    if int(config.anomaly.get("ensemble", 1)) < 1:
        raise ValueError(f"anomaly.ensemble={config.anomaly.ensemble}: need at least 1 draw")
    return values


def level_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """One config per noise level (the config itself without `anomaly.levels`)."""
    values = levels(config)
    if not values:
        return [config]
    out = []
    for value in values:
        copy = config.copy_and_resolve_references()
        copy.anomaly[LEVEL_FIELDS[config.method]] = value
        out.append(copy)
    return out
