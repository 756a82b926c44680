"""UMA-DDPM: masking module + patch noising + modality-aware module (MASP, Mamba) + dual-domain loss.

Variants (`:<preset>,<variant>`, e.g. `:default,unified`): `single` (one sequence, T2 unless
`--config.data.sequences=t1`), `unified` (T1 and T2, one model), and the ablation `masking` (masking only)
and `mam` (masking + MAM, no dual loss). The dual-domain loss adds the network's amplitude head (A_rec).
`anomaly.uma_mask_fraction`: the share of training examples masked (paper preset 1: every one; default 0.5).
`anomaly.test_input`: what the network reads at test (`real`, `paper`: the training masking, chosen on
validation on real tumours; default: the plain image).
"""

from diffseg_jax.config_defaults import anomaly_config

VARIANTS = ("single", "unified", "masking", "mam")


def get_config(arg: str | None = None):
    preset, _, variant = (arg or "").partition(",")
    variant = variant.strip() or "single"
    if variant not in VARIANTS:
        raise ValueError(f"unknown UMA-DDPM variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    c = anomaly_config(preset, "uma_ddpm")
    c.anomaly.corruption = "uma"
    c.model.modality_aware = variant != "masking"
    c.anomaly.dual_loss = variant in ("single", "unified")
    if variant == "unified":
        c.data.sequences = "t1,t2"
    return c
