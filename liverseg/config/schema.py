"""The experiment configuration's sections: frozen dataclasses, their defaults and their checks.

This is the one home of defaults. A run folder stores the fully resolved config (``run_folder``);
prediction rebuilds everything from it, so nothing here may depend on the machine
(device, threads, resume are command-line arguments, not config fields).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


# photo.color -> input channels of the network
PHOTO_CHANNELS = {"rgb": 3, "green": 1, "gray": 1}

# data.modality -> the model.spatial_dims it allows (modalities/ holds the rest of each modality)
MODALITY_SPATIAL_DIMS = {"ct": (2, 3), "photo": (2,)}

LOSSES = ("dice_ce", "ce", "dice", "ce_cldice")  # train.loss; built in losses.py


@dataclass(frozen=True)
class DataConfig:
    # "ct": volumes in HU (DICOM/NIfTI/NRRD/MHA), resampled to preprocess.spacing_mm.
    # "photo": 2D RGB or grey photographs (PNG/JPG/TIFF/GIF) with mask images, used at native size.
    modality: str = "ct"
    # A dataset manifest (liverseg JSON, or an MSD-style dataset.json); relative paths inside it are
    # resolved against ``root`` (or the manifest's own folder when root is empty).
    manifest: str = ""
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    # Class names in output label order; index 0 is the background.
    labels: tuple[str, ...] = ("background", "liver")
    # Source label value -> class index, e.g. {2: 1} merges MSD/LiTS tumour into liver. Values not
    # listed keep their value; any value >= len(labels) after remapping is an error.
    label_remap: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PreprocessConfig:
    # Voxel size the network sees, in mm along the canonical (RAS) axes.
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 2.0)
    # CT intensities are clipped to this window and scaled to [0, 1] ...
    hu_window: tuple[float, float] = (-200.0, 300.0)
    # ... or, when intensity_std_hu > 0, clipped and z-scored: (HU - mean) / std (nnU-Net's CT
    # scheme; `liverseg plan` fills window, mean and std from the foreground voxels).
    intensity_mean_hu: float = 0.0
    intensity_std_hu: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "unet"
    spatial_dims: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "instance"
    dropout: float = 0.0
    # Train on the extra low-resolution heads of models that have them (dynunet, ma_unet), with
    # Dice-CE per head weighted 1/2^i (normalised); prediction always uses the full-resolution output.
    deep_supervision: bool = False
    # 2D models only: number of neighbouring axial slices given as input channels (1 = plain 2D,
    # 3 or 5 = "2.5D"); must be odd so the labelled slice is the centre one.
    slices_2d: int = 1
    # ma_unet: dilation rates of the 3x3 ASPP branches at the bottleneck (plus a 1x1 branch).
    aspp_dilations: tuple[int, ...] = (3, 5, 7)

    @property
    def size_divisor(self) -> int:
        """Network inputs are padded to multiples of this: the product of the down-sampling strides."""
        divisor = 1
        for stride in self.strides:
            divisor *= int(stride)
        return divisor


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (``train.augment``): each step's probability (0 = left out) and range."""
    affine_prob: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.1
    flip_prob: float = 0.0  # left-right flips confuse liver vs spleen: off by default
    intensity_prob: float = 0.5
    noise_std: float = 0.02
    noise_prob: float = 0.2
    brightness: float = 0.1  # multiplicative factor range +-, applied with intensity_prob
    shift: float = 0.05  # additive offset range +-, applied with intensity_prob
    elastic_prob: float = 0.0  # slow; off by default as in nnU-Net
    elastic_sigma: tuple[float, float] = (5.0, 8.0)  # smoothing of the random field, voxels
    elastic_magnitude: tuple[float, float] = (50.0, 150.0)
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # voxels
    contrast_prob: float = 0.15
    contrast: float = 0.25  # factor range +-, about the patch mean, clipped to its range
    lowres_prob: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)  # down-sampling factor range
    gamma_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    iters_per_epoch: int = 250
    batch_size: int = 2
    # Training patch in voxels of the network grid: 3 sizes for 3D models, 2 (in-plane) for 2D ones.
    patch_size: tuple[int, ...] = (128, 128, 96)
    # Fraction of patches centred on foreground (the rest on background), as nnU-Net's oversampling.
    pos_fraction: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-5
    # dice_ce (Dice + cross-entropy) | ce (cross-entropy) | dice | ce_cldice (cross-entropy + 0.5 x soft
    # clDice, a topology term for tubular structures such as vessels; Shit et al., CVPR 2021)
    loss: str = "dice_ce"
    schedule: str = "cosine"  # cosine | poly | constant
    warmup_iters: int = 0
    val_every: int = 5
    seed: int = 0
    amp: bool = True  # used only on CUDA; CPU training is always fp32
    # Stop at the end of the first epoch that passes this many minutes (0 = no limit); the final
    # validation and checkpoints are still written.
    max_minutes: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_rate: float = 1.0  # at most this fraction of training cases in RAM (within --ram-cache-gb)
    # The latest checkpoint is also written every this many minutes inside an epoch (0 = at epoch ends only).
    checkpoint_minutes: float = 30.0
    # Plan spacing, intensity normalisation, patch and batch size from the training data when a run
    # starts (CT only; see `liverseg plan`); the planned values are saved in the run folder's config.
    auto_plan: bool = True
    # At the end of a CT run, also write the ONNX export beside the checkpoints (needs the onnx extra):
    # `liverseg predict` on a CPU then runs it with ONNX Runtime and never imports PyTorch, measured
    # 2x faster per case than the checkpoint (scripts/bench_predict.py).
    export_onnx: bool = True
    plan_memory_gb: float = 8.0  # accelerator memory the planned patch x batch should fit


@dataclass(frozen=True)
class InferConfig:
    # Sliding-window tile: 3 sizes for 3D models, 2 (in-plane, axial slices) for 2D ones.
    roi_size: tuple[int, ...] = (128, 128, 96)
    overlap: float = 0.25
    sw_batch_size: int = 1
    blend: str = "gaussian"  # gaussian | constant
    # Labels (by name) reduced to their largest connected component after prediction.
    largest_component: tuple[str, ...] = ("liver",)
    # Labels (by name) whose enclosed holes are filled (only background voxels change).
    fill_holes: tuple[str, ...] = ()
    # Label name -> connected components smaller than this many mL are removed (set to background).
    min_object_ml: dict[str, float] = field(default_factory=dict)
    # Test-time augmentation: average the softmax over flips along every subset of these network
    # spatial axes (0, 1, 2 = R, A, S for 3D; 0, 1 in-plane for 2D); empty = off. [0, 1, 2] = 8 passes.
    tta_flip_axes: tuple[int, ...] = ()
    # 3D models: a first pass at coarse_factor x the network spacing finds the labelled region; the
    # full-resolution pass then runs only inside its bounding box plus coarse_margin_mm (clipped to the
    # volume). Falls back to the whole volume when the coarse pass finds nothing.
    coarse_to_fine: bool = True
    coarse_factor: int = 2
    coarse_margin_mm: float = 20.0


@dataclass(frozen=True)
class PhotoConfig:
    # data.modality=photo only. The channels the network sees ("rgb", "green" — the usual choice for
    # retinal vessels —, or "gray"); each image is standardised to zero mean, unit variance inside its
    # field of view.
    color: str = "rgb"
    # Contrast-limited adaptive histogram equalisation of each channel first (scikit-image's
    # equalize_adapthist at this clip limit; 0 = off), as vessel-segmentation pipelines do to even out
    # uneven illumination.
    clahe: float = 0.0
    # A case without a field-of-view mask: pixels brighter than this (0-255, any channel) form its field
    # of view (a fundus photograph's lit disc); 0 = the whole image.
    fov_threshold: int = 0
    # Resolution normalisation. Each photograph is resized (for training and for prediction; predictions
    # are resized back to the photograph's own pixels) so that its field of view is this many pixels wide,
    # so vessels appear at similar pixel widths whatever the camera's resolution (FOV widths: DRIVE about
    # 540 px, CHASE_DB1 896-924, HRF about 3,300). 0 = native size.
    fov_diameter: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    photo: PhotoConfig = field(default_factory=PhotoConfig)

    def validate(self) -> "ExperimentConfig":
        """Cross-field checks; raises ConfigError naming the key, the value and the fix."""
        if self.data.modality not in MODALITY_SPATIAL_DIMS:
            raise ConfigError(f"data.modality={self.data.modality!r}: use {' or '.join(MODALITY_SPATIAL_DIMS)}")
        if self.photo.color not in PHOTO_CHANNELS:
            raise ConfigError(f"photo.color={self.photo.color!r}: use {', '.join(PHOTO_CHANNELS)}")
        if not 0 <= self.photo.fov_threshold < 255:
            raise ConfigError(f"photo.fov_threshold={self.photo.fov_threshold}: a grey level in 0..254 (0 = the "
                              "whole image is the field of view)")
        if self.photo.fov_diameter != 0 and not 32 <= self.photo.fov_diameter <= 8192:
            raise ConfigError(f"photo.fov_diameter={self.photo.fov_diameter}: a field-of-view width in pixels "
                              "between 32 and 8192, or 0 for the native size")
        if not 0.0 <= self.photo.clahe <= 1.0:
            raise ConfigError(f"photo.clahe={self.photo.clahe}: a clip limit in [0, 1] (0 = off; 0.01 is "
                              "scikit-image's default)")
        allowed_dims = MODALITY_SPATIAL_DIMS[self.data.modality]
        if self.model.spatial_dims in (2, 3) and self.model.spatial_dims not in allowed_dims:
            raise ConfigError(f"data.modality={self.data.modality} needs model.spatial_dims="
                              f"{' or '.join(map(str, allowed_dims))}, got {self.model.spatial_dims}")
        labels = self.data.labels
        if len(labels) < 2 or labels[0] != "background":
            raise ConfigError(f"data.labels={list(labels)}: needs 'background' first and at least one "
                              "foreground class, e.g. [background, liver]")
        for name in self.infer.largest_component:
            if name not in labels:
                raise ConfigError(f"infer.largest_component names {name!r}, which is not in "
                                  f"data.labels={list(labels)}")
        for key in ("fill_holes", "min_object_ml"):
            for name in getattr(self.infer, key):
                if name not in labels:
                    raise ConfigError(f"infer.{key} names {name!r}, which is not in data.labels={list(labels)}")
        for name, size in self.infer.min_object_ml.items():
            if size < 0:
                raise ConfigError(f"infer.min_object_ml[{name}]={size}: must be at least 0 (mL)")
        bad_axes = [a for a in self.infer.tta_flip_axes if not 0 <= a < self.model.spatial_dims]
        if bad_axes or len(set(self.infer.tta_flip_axes)) != len(self.infer.tta_flip_axes):
            raise ConfigError(f"infer.tta_flip_axes={list(self.infer.tta_flip_axes)}: distinct axes in "
                              f"0..{self.model.spatial_dims - 1} (model.spatial_dims={self.model.spatial_dims})")
        if self.infer.coarse_factor < 2:
            raise ConfigError(f"infer.coarse_factor={self.infer.coarse_factor}: must be at least 2 "
                              "(set infer.coarse_to_fine=false to turn the coarse pass off)")
        if self.infer.coarse_margin_mm < 0:
            raise ConfigError(f"infer.coarse_margin_mm={self.infer.coarse_margin_mm}: must be at least 0")
        for src, dst in self.data.label_remap.items():
            if not 0 <= dst < len(labels):
                raise ConfigError(f"data.label_remap maps {src} -> {dst}, outside 0..{len(labels) - 1} "
                                  f"(data.labels={list(labels)})")
        _check_positive("preprocess.spacing_mm", self.preprocess.spacing_mm)
        low, high = self.preprocess.hu_window
        if not low < high:
            raise ConfigError(f"preprocess.hu_window={[low, high]}: the lower bound must be below the upper")
        if self.model.spatial_dims not in (2, 3):
            raise ConfigError(f"model.spatial_dims={self.model.spatial_dims}: must be 2 or 3")
        if len(self.model.strides) != len(self.model.channels) - 1:
            raise ConfigError(f"model.strides has {len(self.model.strides)} entries but model.channels has "
                              f"{len(self.model.channels)}: strides needs one fewer entry than channels")
        dims = self.model.spatial_dims
        for key, sizes in (("train.patch_size", self.train.patch_size), ("infer.roi_size", self.infer.roi_size)):
            if len(sizes) != dims or any(v <= 0 for v in sizes):
                raise ConfigError(f"{key}={list(sizes)}: needs {dims} positive sizes for model.spatial_dims={dims}")
        if self.model.slices_2d < 1 or self.model.slices_2d % 2 == 0:
            raise ConfigError(f"model.slices_2d={self.model.slices_2d}: must be an odd number (1, 3, 5, ...)")
        if dims == 3 and self.model.slices_2d != 1:
            raise ConfigError(f"model.slices_2d={self.model.slices_2d} applies to 2D models only; "
                              "set model.spatial_dims=2 or model.slices_2d=1")
        if self.train.loss not in LOSSES:
            raise ConfigError(f"train.loss={self.train.loss!r}: use {', '.join(LOSSES)}")
        if self.train.schedule not in ("cosine", "poly", "constant"):
            raise ConfigError(f"train.schedule={self.train.schedule!r}: use cosine, poly or constant")
        if self.infer.blend not in ("gaussian", "constant"):
            raise ConfigError(f"infer.blend={self.infer.blend!r}: use gaussian or constant")
        if not 0.0 <= self.infer.overlap < 1.0:
            raise ConfigError(f"infer.overlap={self.infer.overlap}: must be in [0, 1)")
        if not 0.0 <= self.train.pos_fraction <= 1.0:
            raise ConfigError(f"train.pos_fraction={self.train.pos_fraction}: must be in [0, 1]")
        for key in ("epochs", "iters_per_epoch", "batch_size", "val_every"):
            if getattr(self.train, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self.train, key)}: must be at least 1")
        augment = self.train.augment
        fractions = {f"augment.{key}": getattr(augment, key) for key in (
            "affine_prob", "flip_prob", "intensity_prob", "noise_prob", "elastic_prob", "blur_prob", "contrast_prob",
            "lowres_prob", "gamma_prob")}
        for key, value in {**fractions, "cache_rate": self.train.cache_rate}.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"train.{key}={value}: a probability/fraction in [0, 1]")
        for key in ("elastic_sigma", "elastic_magnitude", "blur_sigma", "lowres_zoom", "gamma"):
            low, high = getattr(augment, key)
            if not 0.0 < low <= high:
                raise ConfigError(f"train.augment.{key}={[low, high]}: needs 0 < low <= high")
        if self.train.checkpoint_minutes < 0 or self.train.plan_memory_gb <= 0:
            raise ConfigError(f"train.checkpoint_minutes={self.train.checkpoint_minutes} must be >= 0 and "
                              f"train.plan_memory_gb={self.train.plan_memory_gb} > 0")
        if self.preprocess.intensity_std_hu < 0:
            raise ConfigError(f"preprocess.intensity_std_hu={self.preprocess.intensity_std_hu}: must be >= 0 "
                              "(0 = scale the hu_window to [0, 1])")
        return self


def _check_positive(key: str, values: tuple) -> None:
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ConfigError(f"{key}={list(values)}: needs three positive numbers")
