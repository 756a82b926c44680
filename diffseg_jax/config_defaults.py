"""Fields every method's config shares (data, training, sampling, evaluation), per preset.

Presets: 'smoke' (seconds; tests), '' (default: the CPU demo on the embedded phantom data), 'real' (real
BraTS scans on a CPU: 128 px over the brain's crop, real-data augmentation, most cases trained on), 'paper'
(published settings, for a GPU/TPU). A method's config file starts from `base_config(preset)` and sets
its model; every field can be overridden on the command line (`--config.train.steps=200`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from diffseg_jax.vocabulary import ConfigError as ConfigError  # re-exported

PRESETS = ("smoke", "", "real", "paper")


def parse_preset(arg: str | None) -> str:
    preset = (arg or "").strip()
    if preset == "default":
        preset = ""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of smoke, default, real, paper")
    return preset


def unet_model_config(preset: str) -> ml_collections.ConfigDict:
    """The U-Net shape every segmentation method shares per preset (so rows compare at equal size)."""
    m = ml_collections.ConfigDict()
    m.base_features = 16
    m.multipliers = (1, 2, 4, 8)
    m.num_res_blocks = 1
    m.attention_levels = (3,)  # attention at 8x8 for 64 px: at 16x16 it doubled the step time
    m.dropout = 0.0
    m.dtype = "auto"  # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU; params stay float32
    m.remat = False  # recompute ResBlock activations in the backward pass (memory for large images)
    if preset == "smoke":
        m.base_features = 8
        m.multipliers = (1, 2)
        m.attention_levels = (1,)
    elif preset == "real":
        # 128 px: a fifth level gives the bottleneck the receptive field of the whole crop, and attention at
        # 8x8 measured a little faster than at 16x16 (docs/results.md, "Real BraTS")
        m.multipliers = (1, 2, 4, 8, 8)
        m.attention_levels = (4,)
    elif preset == "paper":
        m.base_features = 64
        m.multipliers = (1, 1, 2, 2, 4, 4)
        m.num_res_blocks = 2
        m.attention_levels = (4, 5)
    return m


def add_diffusion(c: ml_collections.ConfigDict, preset: str) -> None:
    """The mask-diffusion fields shared by BTSegDiff and MedSegDiff (`methods/conditional_diffusion.py`).

    Default (CPU demo): x0-parameterised (converges far faster on a short budget; the noise term stays in
    the loss, min-SNR weighted) with the Dice + BCE auxiliary on the x0 estimate. Paper: eps-prediction,
    T = 1000 linear betas, no auxiliary, the full DDPM chain at sampling.
    """
    c.diffusion = d = ml_collections.ConfigDict()
    d.num_steps = 1000
    d.schedule = "linear"
    d.parameterization = "x0"
    d.min_snr_gamma = 5.0
    d.timestep_power = 1.0  # training t ~ T u^(1/power): 1 = uniform (the papers); > 1 favours high noise
    # Recycling (Fu et al., MELBA 2023): x_t built from the model's own x0 estimate (no gradient through it)
    # instead of the reference, as at sampling. 'xT': the estimate from pure noise at t = T; 'xt': from x_t
    # of the reference at the same t. Each example recycles with probability recycling_prob. '' = off.
    d.recycling = ""
    d.recycling_prob = 0.5
    d.recycling_ramp_steps = 0  # > 0: the probability rises linearly from 0 to recycling_prob over them
    # Importance sampling of t (Nichol & Dhariwal 2021): t drawn per bin of T / importance_bins steps with
    # probability ~ the RMS of the bin's last importance_history losses, each loss weighted by 1 / (bins p);
    # uniform until every bin's history is full. Replaces timestep_power (which must then be 1).
    d.importance_sampling = False
    d.importance_bins = 20
    d.importance_history = 10
    # Self-conditioning (Chen et al. 2022, "Analog Bits"): the previous x0 estimate is an extra input of the
    # network. Training: for half the batches it is the model's own estimate at the same x_t (no gradient
    # through it), else zeros; sampling (every sampler): the estimate of the step before, zeros at the first.
    d.self_condition = False

    c.loss = lo = ml_collections.ConfigDict()
    lo.noise_weight = 1.0
    lo.x0_weight = 0.5
    lo.seg_weight = 1.0  # Dice + BCE on the x0 estimate (Diff-UNet); 0 in the paper presets
    # x0 term on x0_hat clipped to [-1, 1]: with eps-prediction the unclipped term weighs the eps error by
    # 0.5 (1 - alpha_bar) / alpha_bar (~12,000 at t = 999) and training sees only the noisiest steps.
    lo.x0_clip = True
    # > 0: an image-only head on the condition encoder's features, Dice + BCE at every step with this weight
    # (deep supervision of the image pathway; BTSegDiff and MedSegDiff-V1; sampling does not use it)
    lo.condition_head_weight = 0.0
    lo.condition_head_levels = 0  # the head on every fused level (0) or on the k coarsest
    if preset == "paper":
        d.parameterization = "eps"
        lo.seg_weight = 0.0
        c.sampling.method = "ddpm"


def base_config(preset: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "segmentation"  # 'segmentation' | 'anomaly' | 'synthesis' (`diffseg_jax/tasks/`)
    c.method = ""
    c.preset = preset or "default"
    c.seed = 0

    c.data = d = ml_collections.ConfigDict()
    d.root = config_dict.placeholder(str)  # a BraTS folder; None -> the embedded phantom dataset
    d.cache_dir = config_dict.placeholder(str)  # None -> $DIFFSEG_CACHE or ~/.cache/diffseg_jax
    d.phantom_cases = 60
    d.phantom_seed = 0
    d.phantom_spacing_mm = 2.0
    # 3: with the tumour mimics of real scans (periventricular FLAIR rim, choroid plexus, vessels on T1c) and
    # real-like lesion contrasts; 2: the earlier generator (tables measured on it say so).
    d.phantom_version = 3
    d.image_size = 64
    d.target = "regions"  # 'regions' (WT/TC/ET) or 'wt'
    d.slice_range = config_dict.placeholder(tuple)  # e.g. (80, 120); None -> tumour + healthy
    d.healthy_fraction = 1.0  # healthy slices per tumour slice when slice_range is None
    d.split_fractions = (0.7, 0.15, 0.15)
    d.split_seed = 0
    d.augment = True  # flips and quarter turns (and what the augment_* fields add), on the fly, seeded
    d.augment_quarter_turns = True  # 90-degree turns (off for real scans, which share one orientation)
    d.augment_rotation_degrees = 0.0  # > 0: a rotation ~ U(-r, r) degrees about the slice centre
    d.augment_scale = 0.0  # > 0: a zoom ~ 1 + U(-s, s)
    d.augment_intensity_scale = 0.0  # > 0: each sequence x (1 + U(-s, s))
    d.augment_intensity_shift = 0.0  # > 0: each sequence + U(-d, d) inside the brain (z-score units)
    d.available = ""  # e.g. 't1,flair': the sequences the cases have (others may lack files; zero channels)
    d.layout = ""  # '' = BraTS namings, or MSD / nnU-Net by a dataset.json; else a layout JSON file
    # Each case is prepared once into its own folder under the cache dir (`prepare_workers` processes; 0 = one
    # per core, at most 8). True: the training slices stay in those .npy files and are read an example at a
    # time, so memory does not grow with the number of cases; False: read into memory (same batches).
    d.slices_on_disk = True
    d.prepare_workers = 0
    d.on_bad_case = "stop"  # a case that fails the check before training: 'stop' the run or 'skip' it
    d.folds = 0  # >= 3: cross-validation by patient, fold `data.fold` is the test split (val: the next)
    d.fold = 0
    d.fold_val_cases = 0  # with folds: 0 = validate on the next fold, k = on k patients of the other folds

    c.train = t = ml_collections.ConfigDict()
    t.steps = 1600
    t.batch_size = 8
    t.optimizer = "adamw"  # 'adamw' or 'sgd' (Nesterov, train.momentum)
    t.momentum = 0.9
    t.adam_b1 = 0.9
    t.adam_b2 = 0.999
    t.learning_rate = 3e-4
    t.warmup_steps = 50
    t.weight_decay = 1e-4
    t.grad_clip = 1.0
    t.ema_decay = 0.999
    t.log_every = 50
    t.checkpoint_every = 400
    t.eval_every = 400
    t.val_max_slices = 64
    t.keep_checkpoints = 2
    t.sequence_dropout = 0.0  # fraction of examples that see a random subset of the sequences
    t.stop_after = 0  # >0: end this run after that many steps, with a checkpoint (the next run resumes)
    t.init_from = ""  # a workdir: start from its best parameters (fine-tuning; a fresh optimiser)

    c.sampling = s = ml_collections.ConfigDict()
    s.method = "ddim"  # 'ddim' (num_steps) or 'ddpm' (the full chain)
    s.num_steps = 10
    s.num_samples = 3
    s.eta = 0.0
    s.fusion = "stepwise"  # diffusion methods: 'stepwise' (BTSegDiff's uncertainty) or 'mean' (ensemble)
    s.stepwise_last = 0  # > 0: the stepwise fusion takes only the chain's last that many estimates

    c.eval = e = ml_collections.ConfigDict()
    e.data_root = config_dict.placeholder(str)  # segment another folder (labels optional)
    e.layout = ""  # the layout of eval.data_root, as data.layout
    e.output_dir = config_dict.placeholder(str)  # None -> <workdir>/eval
    e.split = "test"
    e.checkpoint = "best"  # 'best' (by validation Dice) or 'latest'
    # Slices per sampling program, and programs run at once from their own host threads. On 2 CPU cores
    # 4 x 2 samples a case ~1.6x faster than 16 x 1 (one program leaves ~30% of the cores idle between its
    # many small ops; docs/results.md, "Speed"); the result does not depend on `concurrent_batches`.
    e.batch_size = 4
    e.concurrent_batches = 2
    e.max_cases = 0  # 0 = all
    e.num_overlays = 3
    e.write_predictions = True
    e.available = ""  # e.g. 'flair': segment with only these sequences (the others zeroed); 'each': all 15
    e.fill_in_workdir = config_dict.placeholder(str)  # a trained M2DN: synthesise missing sequences first
    e.fill_in_config = "configs/m2dn.py"  # its config (':smoke' etc. as --config takes it)
    # 'flips': test-time augmentation, the mean probability over the slice and its three flips, uncertainty =
    # that mean's entropy (an uncertainty for any method, e.g. the U-Net's); '' = the method's own output.
    e.tta = ""
    # True: also each region's probability (<case>_prob_whole/core/enhance.nii.gz, float32: NIfTI has no
    # float16) on the input's grid, for ensembling with other tools.
    e.save_probabilities = False
    # > 0: the U-Net baseline's MC dropout (Gal & Ghahramani 2016): that many passes with dropout active
    # (train it with model.dropout > 0), the mean probability, uncertainty = that mean's entropy.
    e.mc_dropout = 0

    if preset == "smoke":
        d.phantom_cases = 6
        d.phantom_spacing_mm = 4.0
        d.image_size = 32
        d.healthy_fraction = 0.5
        t.steps = 6
        t.batch_size = 4
        t.warmup_steps = 1
        t.log_every = 2
        t.checkpoint_every = 3
        t.eval_every = 3
        t.val_max_slices = 8
        s.num_steps = 3
        s.num_samples = 2
        e.batch_size = 8
        e.num_overlays = 1
    elif preset == "real":
        # Real BraTS on a CPU (docs/results.md, "Real BraTS"): the brain's crop (~160 mm) at 128 px, ~1.25 mm
        # a pixel; every tumour slice and half as many healthy ones; the augmentation real scans need; of 12
        # cases 9 train by a 9/1/2 split, or 7 in 3-fold cross-validation (7/1/4, `data.fold_val_cases`).
        d.image_size = 128
        d.healthy_fraction = 0.5
        d.split_fractions = (0.75, 0.083, 0.167)
        d.fold_val_cases = 1
        d.augment_quarter_turns = False
        d.augment_rotation_degrees = 10.0
        d.augment_scale = 0.1
        d.augment_intensity_scale = 0.1
        d.augment_intensity_shift = 0.1
        t.learning_rate = 6e-4
        t.val_max_slices = 32
        s.num_steps = 4
        s.num_samples = 3
    elif preset == "paper":
        d.image_size = 256
        d.slice_range = (80, 120)
        t.steps = 100_000
        t.batch_size = 8
        t.learning_rate = 1e-4
        t.warmup_steps = 0
        t.weight_decay = 0.0
        t.ema_decay = 0.9999
        e.batch_size = 16  # an accelerator: one large program at a time
        e.concurrent_batches = 1
        t.log_every = 100
        t.checkpoint_every = 5000
        t.eval_every = 5000
        t.val_max_slices = 256
    return c


def anomaly_config(arg: str | None, method: str) -> ml_collections.ConfigDict:
    """The fields every anomaly detector shares (configs/anomaly_*.py start here), per preset.

    Healthy subjects (IXI layout) train; tumour cases (BraTS layout) validate the threshold and test. Defaults
    follow pDDPM's protocol where it fixes them (x0-prediction, cosine schedule, T = 1000, test step 499,
    patches of half the image side on a 2x2 grid, median filter 5, components <= 7 voxels dropped); the CPU
    demo shrinks the grid (64 x 64 x 32) and the network.
    """
    preset = parse_preset(arg)
    c = base_config(preset)
    c.task = "anomaly"
    c.method = method

    d = c.data
    d.sequences = "t2"  # one sequence = single mode; "t1,t2" = unified mode (one model for both)
    d.grid = (64, 64, 32)  # H, W, axial slices after cropping to the brain (the papers: 96 x 96 x 50)
    d.healthy_root = config_dict.placeholder(str)  # an IXI folder; None -> phantom healthy subjects
    d.healthy_subjects = 40
    d.mask_suffix = "mask"  # <subject>-<suffix>.nii.gz brain masks; absent or '' = the data's non-background
    d.resample = ""  # healthy sequences on different grids (IXI): 'first' (the first's grid, RAS) or '1mm'
    d.min_brain_fraction = 0.05  # training slices need this much brain
    # 'ixi': healthy subjects train (`healthy_root`); 'brats': the labelled tumour cases' slices at least
    # `healthy_margin_mm` from any tumour voxel (split by patient as the segmenters', `data.folds`)
    d.healthy_source = "ixi"
    d.healthy_margin_mm = 0.0
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
    a.uma_mask_fraction = 0.5  # examples masked per batch (the paper: 1, every example; set in `paper`)
    a.test_input = "plain"  # UMA-DDPM at test: 'plain', 'high_frequency' or 'masked' (methods.md)
    a.levels = ""  # e.g. '250,499,750': maps of partial diffusion at those levels averaged (anomaly_levels)
    a.ensemble = 1  # reconstructions (noise draws) per level, their maps averaged
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
    if preset in ("", "real"):
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
    elif preset == "real":
        # Real BraTS without a healthy cohort: trained on the healthy slices of the training cases (5 mm from
        # any tumour voxel), the threshold chosen on 2 validation cases' tumours, tested on the test fold's
        # (12 cases, 3 folds: 6 / 2 / 4, the segmenters' test folds); the brain's crop at 96 x 96 (~1.7 mm),
        # 64 axial slices (~2.2 mm); geometric augmentation only (intensities are what the detectors learn).
        d.healthy_source = "brats"
        d.healthy_margin_mm = 5.0
        d.folds = 3
        d.fold_val_cases = 2
        d.resample = "first"  # a real IXI subject added by data.healthy_root has T1 and T2 on two grids
        d.grid = (96, 96, 64)
        d.image_size = 96
        d.augment_intensity_scale = d.augment_intensity_shift = 0.0
        t.learning_rate = 3e-4
        a.patch_size = a.patch_stride = 48
        a.uma_patch = 12
        a.mddpm_half_width_range = (3, 15)
        # UMA-DDPM reads the training-time masking at test: on validation it beats the plain image at every
        # noise level up to 499 (docs/results.md, "On real tumours: first fold"); other detectors ignore it
        a.test_input = "masked"
    elif preset == "paper":
        d.grid = (96, 96, 50)
        d.image_size = 96
        a.patch_size = a.patch_stride = 48
        a.uma_mask_fraction = 1.0
        a.test_input = "masked"  # the only input the network trains on
        c.sampling.method = "ddpm"
    return c
