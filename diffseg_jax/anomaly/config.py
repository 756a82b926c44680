"""Config fields every anomaly detector shares (configs/anomaly_*.py start here), per preset.

Healthy subjects (IXI layout) train; tumour cases (BraTS layout) validate the threshold and test. Defaults
follow pDDPM's protocol where it fixes them (x0-prediction, cosine schedule, T = 1000, test step 499,
patches of half the image side on a 2x2 grid, median filter 5, components <= 7 voxels dropped); the CPU
demo shrinks the grid (64 x 64 x 32) and the network.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from diffseg_jax.config_defaults import base_config, parse_preset, unet_model_config


def anomaly_config(arg: str | None, method: str) -> ml_collections.ConfigDict:
    preset = parse_preset(arg)
    c = base_config(preset)
    c.task = "anomaly"
    c.method = method

    d = c.data
    d.sequences = "t2"  # one sequence = single mode; "t1,t2" = unified mode (one model for both)
    d.grid = (64, 64, 32)  # H, W, axial slices after cropping to the brain (the papers: 96 x 96 x 50)
    d.healthy_root = config_dict.placeholder(str)  # an IXI folder; None -> phantom healthy subjects
    d.healthy_subjects = 40
    d.mask_suffix = "mask"  # <subject>-<suffix>.nii.gz brain masks; '' = voxels > 0 (skull-stripped data)
    d.min_brain_fraction = 0.05  # training slices need this much brain
    d.tumour_split_fractions = (0.0, 0.5, 0.5)  # BraTS-layout cases: none train, half val, half test
    d.image_size = d.grid[0]

    c.model = m = unet_model_config(preset)
    m.modality_aware = False
    m.num_prompts = 4
    m.mamba_state = 16

    c.diffusion = df = ml_collections.ConfigDict()
    df.num_steps = 1000
    df.schedule = "cosine"
    df.parameterization = "x0"
    df.timestep_power = 1.0

    c.anomaly = a = ml_collections.ConfigDict()
    a.patch_size = d.grid[0] // 2
    a.patch_stride = d.grid[0] // 2
    a.test_step = 499
    a.corruption = "none"  # pDDPM 'none', mDDPM 'mddpm', UMA-DDPM 'uma'
    a.mddpm_half_width_range = (2, 10)
    a.uma_half_width = 4  # frequency box kept out (our choice; the paper does not give it)
    a.uma_patch = 8
    a.uma_ratio = 0.25
    a.dual_loss = False
    a.freq_weight = 1.0  # alpha
    a.pixel_weight = 1.0  # beta
    a.noise = "gaussian"  # AnoDDPM: 'simplex'
    a.simplex_octaves = 6
    a.simplex_persistence = 0.8
    a.simplex_frequency = 64.0
    a.start_step = 250  # AnoDDPM's lambda
    a.dae_noise_scale = 8  # DAE noise drawn at 1/8 resolution
    a.dae_noise_std = 0.2
    a.squared_error = False  # AnoDDPM: squared residual
    a.erosion = 1
    a.median_size = 5
    a.min_component = 7

    t = c.train
    if preset == "":
        t.steps = 1000
        t.batch_size = 16
        t.eval_every = t.checkpoint_every = 250
        t.val_max_slices = 96

    if preset == "smoke":
        d.grid = (32, 32, 8)
        d.healthy_subjects = 6
        d.image_size = 32
        a.patch_size = a.patch_stride = 16
        a.uma_patch = 4
        a.mddpm_half_width_range = (1, 3)
        a.median_size = 3
        a.dae_noise_scale = 4
        t.batch_size = 8
        t.val_max_slices = 16
    elif preset == "paper":
        d.grid = (96, 96, 50)
        d.image_size = 96
        a.patch_size = a.patch_stride = 48
        c.sampling.method = "ddpm"
    return c
