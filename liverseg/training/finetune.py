"""Fine-tuning: a training run that starts from a built-in model's or a trained run's weights.

``liverseg train --init SOURCE`` where SOURCE is

* the name of a built-in model (``liver``, see ``liverseg models``): its network (``kul_unet`` with the
  built-in's channels and sub-sampling factor) and its preprocessing (its spacing, canonical RAS
  orientation, and the KU Leuven CT scaling ``clip(HU / 1000, -0.2, 0.2) * 2.5``, which liverseg's config
  writes exactly as ``hu_window [-200, 200]``, ``intensity_mean_hu 0``, ``intensity_std_hu 400``:
  ``(clip(HU, -200, 200) - 0) / 400``) replace the config's ``model`` and ``preprocess``;
* a run folder written by ``liverseg train`` (its best checkpoint, else its latest) or one such
  checkpoint file (``.pt``): its ``model``, ``preprocess``, ``photo``, ``data.modality``, ``train.patch_size`` and
  ``infer.roi_size`` replace the config's.

``--set`` overrides are applied after that and win, except where they would make the weights
meaningless: another ``model.name`` / ``spatial_dims`` / ``channels`` / ``strides`` / ``num_res_units`` /
``norm`` / ``aspp_dilations`` than the source's, another ``data.modality``, or ``train.auto_plan=true``
(planning would change the spacing and intensity normalisation the weights were trained with) fail with
a ``ConfigError``. A changed preprocessing is allowed, with a warning. The KU Leuven networks' runs skip
the ONNX export (``FIXED_SHAPE_ONNX``) and predict from their checkpoint.

Loading (``load_init``) copies every tensor whose name and shape match; tensors whose shape differs (another
number of labels: the built-in has 2 classes, one logit; a config with 3 has 3 logits; another number of
input channels) keep the fresh initialisation of the new model, and so do the model's tensors the source
lacks; each group is reported in one log line, and recorded with the source and its sha256 in the run
folder's init record (``run_folder.write_init_record``) and in every checkpoint (``"init"``).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import builtin
from ..builtin import WEIGHTS
from ..config import (DataConfig, ExperimentConfig, InferConfig, ModelConfig, PreprocessConfig, TrainConfig,
                      apply_overrides, load_config, to_dict)
from ..errors import ConfigError, InputError
from ..modalities import modality_for
from ..models import build_model
from ..run_folder import RUN, find_checkpoint, load_checkpoint_file

log = logging.getLogger(__name__)

# Model fields that change the network's tensors: a fine-tune must keep the source's values.
ARCHITECTURE_KEYS = ("name", "spatial_dims", "channels", "strides", "num_res_units", "norm", "aspp_dilations")

# The KU Leuven models' CT scaling clip(HU / 1000, -0.2, 0.2) * 2.5 in liverseg's terms: clip to the window,
# then (HU - mean) / std (grid.road.intensity_map with intensity_std_hu > 0).
KUL_CT_SCALING = {"hu_window": (-200.0, 200.0), "intensity_mean_hu": 0.0, "intensity_std_hu": 400.0}
# kul_unet built-ins: the training patch (3 mm voxels: 243 mm; the network pads it to 108 inside) and the
# sliding-window tile whose padded core is the original's fixed 189 x 162 x 162 patch.
KUL_UNET_TRAIN_PATCH = (81, 81, 81)
KUL_UNET_ROI = (162, 135, 135)
# Networks whose forward computes paddings and crops from the input's shape in Python: the ONNX exporter bakes
# the example tile's sizes into the graph, so its ONNX export fails on the smaller tiles fit_tile picks (measured:
# a kul_unet run's export on a 3 mm abdomen CT). A fine-tune of these skips the export (train.export_onnx
# false unless --set) and predicts from its checkpoint with PyTorch.
FIXED_SHAPE_ONNX = ("kul_unet", "kul_resunet")


@dataclass(frozen=True)
class InitSource:
    """Where a fine-tune's first weights come from."""

    spec: str  # as given to --init
    kind: str  # builtin | run | checkpoint
    path: Path  # the weights file
    sha256: str  # of that file
    cfg: ExperimentConfig  # the source's own config (for a built-in: the one that reproduces its preprocessing)
    weights: dict = field(repr=False, default_factory=dict)  # state-dict keys of liverseg's model -> tensors

    @property
    def label(self) -> str:
        return self.spec if self.kind == "builtin" else str(self.path)

    def record(self) -> dict[str, Any]:
        return {"source": self.spec, "kind": self.kind, "weights": str(self.path), "sha256": self.sha256,
                "model": to_dict(self.cfg.model), "labels": list(self.cfg.data.labels)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_init(spec: str | Path) -> InitSource:
    """A built-in model name, a run folder or a checkpoint file -> its weights and config."""
    text = str(spec)
    path = Path(text)
    if not path.exists():
        if builtin.is_builtin(text):
            return _builtin_source(text)
        raise InputError(f"--init {text}: no such run folder or checkpoint file, and not a built-in model "
                         f"(built-in: {', '.join(builtin.BUILTIN_MODELS)}; see `liverseg models`)")
    kind = "run" if path.is_dir() else "checkpoint"
    checkpoint_path = find_checkpoint(path) if path.is_dir() else path
    checkpoint, cfg = load_checkpoint_file(
        checkpoint_path, f"; --init takes a run folder, its {RUN.best}/{RUN.last}, or a built-in model name "
                         "(exported ONNX/TorchScript files hold no trainable weights)")
    return InitSource(text, kind, checkpoint_path, _sha256(checkpoint_path), cfg, dict(checkpoint["model"]))


def _builtin_source(name: str) -> InitSource:
    """The built-in's PyTorch module (sha256-checked weights) and the config that trains and predicts as it does."""
    model = builtin.get(name)
    module = builtin.torch_module(name)
    network = {"KulUNet": "kul_unet", "KulResUNet": "kul_resunet"}.get(type(module).__name__)
    if network is None:
        raise InputError(f"--init {name}: fine-tuning the built-in {type(module).__name__} network is not supported")
    levels = len(model.channels)
    model_cfg = ModelConfig(name=network, spatial_dims=3, channels=tuple(model.channels),
                            strides=(int(getattr(module, "factor", model.factor)),) * (levels - 1), norm="patch")
    cfg = ExperimentConfig(
        data=DataConfig(labels=tuple(model.network_labels)),
        preprocess=PreprocessConfig(spacing_mm=tuple(model.spacing_mm), **KUL_CT_SCALING),
        model=model_cfg,
        train=TrainConfig(patch_size=KUL_UNET_TRAIN_PATCH if network == "kul_unet" else TrainConfig().patch_size,
                          auto_plan=False),
        infer=InferConfig(roi_size=KUL_UNET_ROI if network == "kul_unet" else InferConfig().roi_size,
                          largest_component=tuple(n for n in ("liver",) if n in model.labels), coarse_to_fine=False),
    ).validate()
    weights = {f"net.{key}": value for key, value in module.state_dict().items()}  # build_model's SizeAdapter
    fresh = build_model(model_cfg, 1, len(model.network_labels)).state_dict()
    if {k: tuple(v.shape) for k, v in fresh.items()} != {k: tuple(v.shape) for k, v in weights.items()}:
        raise InputError(f"--init {name}: the built-in's weights do not fit liverseg's {network} with "
                         f"channels {list(model.channels)}; fine-tuning this built-in model is not supported")
    path = WEIGHTS / model.weights
    return InitSource(name, "builtin", path, builtin.provenance(model)["weights_sha256"], cfg, weights)


# ----------------------------------------------------------------------------- the config

def finetune_config(cfg: ExperimentConfig, source: InitSource, overrides: list[str] | tuple[str, ...] = ()
                    ) -> ExperimentConfig:
    """``cfg`` (the user's data and training settings) with the source's model and preprocessing, then the
    ``--set`` overrides; raises ConfigError for an override that the source's weights cannot follow."""
    src = source.cfg
    train = replace(cfg.train, auto_plan=False, patch_size=src.train.patch_size,
                    export_onnx=cfg.train.export_onnx and src.model.name not in FIXED_SHAPE_ONNX)
    infer = replace(cfg.infer, roi_size=src.infer.roi_size)
    if source.kind == "builtin":
        infer = replace(infer, coarse_to_fine=src.infer.coarse_to_fine)
    data = replace(cfg.data, modality=src.data.modality)
    adapted = replace(cfg, data=data, preprocess=src.preprocess, photo=src.photo, model=src.model, train=train,
                      infer=infer)
    try:
        adapted = adapted.validate()
        final = apply_overrides(adapted, overrides) if overrides else adapted
    except ConfigError as exc:
        raise ConfigError(f"--init {source.label}: {exc}") from None
    check_compatible(final, source, warn=False)  # train() checks again, and warns
    return final


def training_config(config: str | Path | None, run_dir: str | Path, *, resume: bool = False,
                    init: str | Path | None = None, manifest: str | None = None, root: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> tuple[ExperimentConfig, InitSource | None]:
    """``liverseg train``'s config and weights source from its arguments: ``config`` (a file or a shipped
    name; with ``resume`` the run folder's own by default), ``init`` (a built-in model or a run folder whose
    model and preprocessing replace the config's; ``overrides`` still win), the data shortcuts."""
    if resume:
        if init is not None:
            raise InputError(f"--init {init} starts a new run; --resume continues {run_dir} from its {RUN.last}")
        config = config or Path(run_dir) / RUN.config
    elif config is None and init is None:
        raise InputError("--config is required (except with --resume or --init); try --config smoke_3d")
    # with --init alone (config None): the defaults, the source's model and preprocessing
    shortcuts = [f"data.manifest={manifest}"] * bool(manifest) + [f"data.root={root}"] * bool(root)
    if init is None:
        return load_config(config, [*shortcuts, *overrides]), None
    source = resolve_init(init)
    return finetune_config(load_config(config, shortcuts), source, overrides), source


def check_compatible(cfg: ExperimentConfig, source: InitSource, warn: bool = True) -> None:
    """ConfigError when ``cfg`` cannot start from ``source``'s weights; a warning where its preprocessing differs."""
    src = source.cfg
    for key in ARCHITECTURE_KEYS:
        mine, theirs = getattr(cfg.model, key), getattr(src.model, key)
        if mine != theirs:
            raise ConfigError(f"--init {source.label}: model.{key}={_show(mine)} but the source's weights are "
                              f"model.{key}={_show(theirs)}; fine-tuning keeps the source's architecture (drop that "
                              "--set, or train from scratch without --init)")
    if modality_for(cfg) is not modality_for(src):
        raise ConfigError(f"--init {source.label}: data.modality={cfg.data.modality} but the source was trained on "
                          f"{src.data.modality}")
    if cfg.train.auto_plan and modality_for(cfg).traits.auto_plan:
        raise ConfigError(f"--init {source.label}: train.auto_plan=true would re-plan the spacing and intensity "
                          "normalisation the source's weights were trained with; leave it false (set "
                          "train.patch_size / batch_size yourself)")
    for section, key in (("preprocess", "spacing_mm"), ("preprocess", "hu_window"), ("preprocess", "intensity_mean_hu"),
                         ("preprocess", "intensity_std_hu"), ("photo", "color"), ("photo", "clahe"),
                         ("photo", "fov_diameter")):
        mine, theirs = getattr(getattr(cfg, section), key), getattr(getattr(src, section), key)
        if mine != theirs and warn:
            log.warning("--init %s: %s.%s=%s differs from the source's %s: the weights start from images "
                        "prepared otherwise", source.label, section, key, _show(mine), _show(theirs))


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _shape(shape) -> str:
    return "(" + ",".join(str(int(n)) for n in shape) + ")"


def _name(key: str) -> str:
    return key[4:] if key.startswith("net.") else key


# ----------------------------------------------------------------------------- the weights

def load_init(model, source: InitSource) -> dict[str, Any]:
    """Copy the source's tensors into ``model`` where name and shape match; report the rest (logged once per
    group) and return the record the run folder keeps (``run_folder.write_init_record``)."""
    import torch

    own = model.state_dict()
    copied, reinitialised, missing = [], [], []
    new_state = {}
    for key, tensor in own.items():
        if key not in source.weights:
            missing.append(key)
            continue
        value = torch.as_tensor(source.weights[key])
        if tuple(value.shape) != tuple(tensor.shape):
            reinitialised.append((key, tuple(tensor.shape), tuple(value.shape)))
            continue
        new_state[key] = value.to(dtype=tensor.dtype)
        copied.append(key)
    unexpected = [key for key in source.weights if key not in own]
    if not copied:
        raise ConfigError(f"--init {source.label}: none of its {len(source.weights)} tensors fits the model "
                          f"({len(own)} tensors); is it the same architecture?")
    model.load_state_dict(new_state, strict=False)
    log.info("--init %s: copied %d of %d tensors (sha256 %s...)", source.label, len(copied), len(own),
             source.sha256[:12])
    if reinitialised:
        log.warning("--init %s: re-initialised %d tensor%s whose shapes differ from %s: %s", source.label,
                    len(reinitialised), "s" * (len(reinitialised) != 1), source.label,
                    ", ".join(f"{_name(k)} {_shape(a)} vs {_shape(b)}" for k, a, b in reinitialised))
    if missing:
        log.warning("--init %s: %d tensor%s not in %s, initialised fresh: %s", source.label, len(missing),
                    "s" * (len(missing) != 1), source.label, ", ".join(_name(k) for k in missing))
    if unexpected:
        log.warning("--init %s: %d tensor%s of %s unused (not in this model): %s", source.label, len(unexpected),
                    "s" * (len(unexpected) != 1), source.label, ", ".join(_name(k) for k in unexpected))
    return {**source.record(), "copied": len(copied),
            "reinitialised": [{"tensor": k, "shape": list(a), "source_shape": list(b)} for k, a, b in reinitialised],
            "missing": missing, "unexpected": unexpected}


__all__ = ["InitSource", "resolve_init", "finetune_config", "check_compatible", "load_init",
           "ARCHITECTURE_KEYS", "KUL_CT_SCALING"]
