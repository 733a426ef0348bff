"""The two walks of the architecture issue, measured: which liverseg files a call passes through.

    PYTHONPATH=CHECKOUT python scripts/trace_walks.py [--show]

* **prediction**: one CT file read, predicted by ``predict_volume`` (a 1x1x1-convolution network, so the
  walk is the code's, not the network's) and the label map written;
* **config -> training loop**: a YAML config with ``--set`` overrides loaded, ``train`` called, stopped at
  the first call into the loss.

Every Python call whose code lives in ``liverseg/`` is recorded (``sys.setprofile``; property reads such
as ``volume.shape``, comprehensions, resumed generators and module bodies run by an import are not new
steps and are left out), consecutive calls in the same file
collapsed. Printed per walk: the files crossed, the hops between files, and the returns
(a hop into a file the walk had already left), then the same by wing (sub-package, or top-level module). The script finds the functions under their old or new
module names, so it runs on checkouts from before and after the layout change.
"""
from __future__ import annotations

import argparse
import itertools
import importlib
import inspect
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np


class StopWalk(Exception):
    pass


def checkout_package() -> Path:
    """The traced checkout's ``liverseg/`` (the one ``PYTHONPATH`` puts first)."""
    return Path(importlib.import_module("liverseg").__file__).resolve().parent


def from_checkout(module) -> bool:
    """The module's file lies in the traced checkout: for a name the checkout lacks, the editable install's
    finder would otherwise answer with another checkout's module."""
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(checkout_package())


def first_attr(candidates):
    """The first of (module, name) that imports from the traced checkout; old names first, so that an
    editable install of a newer checkout cannot answer for an older one."""
    for module, name in candidates:
        try:
            found = importlib.import_module(module)
            value = getattr(found, name)
        except (ImportError, AttributeError):
            continue
        defining = sys.modules.get(getattr(value, "__module__", None) or module, found)
        if from_checkout(found) and from_checkout(defining):
            return value
    raise ImportError(f"none of {candidates} in {checkout_package()}")


RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
COMPREHENSIONS = {"<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>"}


class Continuations:
    """A comprehension runs inside its function; a generator resumed continues a call already counted. The
    frames of started generators are kept by id (and held, so that no id is reused during the walk);
    ``f_lasti`` cannot tell a first call from a resumption on Python 3.11."""

    def __init__(self) -> None:
        self.started: set[int] = set()
        self.held: list = []

    def __call__(self, frame) -> bool:
        code = frame.f_code
        if code.co_name in COMPREHENSIONS:
            return True
        if not code.co_flags & RESUMABLE:
            return False
        if id(frame) in self.started:
            return True
        self.started.add(id(frame))
        self.held.append(frame)
        return False


def is_property(frame) -> bool:
    """Reading an attribute of a value (``volume.shape``) is not a step of the road."""
    owner = frame.f_locals.get("self")
    if owner is None:
        return False
    attribute = next((klass.__dict__[frame.f_code.co_name] for klass in type(owner).__mro__
                      if frame.f_code.co_name in klass.__dict__), None)
    return isinstance(attribute, property)


def record(fn, stop_in: str | None = None):
    package = checkout_package()
    files: list[str] = []
    is_continuation = Continuations()

    def profiler(frame, event, arg):
        if event != "call":
            return
        filename = frame.f_code.co_filename
        if not filename.startswith(str(package)):
            return
        if frame.f_code.co_name == "<module>":  # a module's body run by its import: not a step of the walk
            return
        if is_property(frame) or is_continuation(frame):
            return
        rel = str(Path(filename).relative_to(package.parent))
        if not files or files[-1] != rel:
            files.append(rel)
        if stop_in and rel.endswith(stop_in):
            raise StopWalk

    # Some steps run in worker threads (slabs read ahead, outputs written behind): follow them too.
    threading.setprofile(profiler)
    sys.setprofile(profiler)
    try:
        fn()
    except StopWalk:
        pass
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return files


def wing_of(file: str) -> str:
    """liverseg/engine/volume.py -> engine; liverseg/infer.py -> infer (a flat module is its own wing)."""
    parts = Path(file).with_suffix("").parts
    return parts[1] if len(parts) > 1 else parts[0]


def summary(files: list[str]) -> tuple[int, int, int]:
    seen, returns = set(), 0
    for previous, current in zip(files, files[1:]):
        seen.add(previous)
        if current in seen:
            returns += 1
    return len(set(files)), len(files) - 1, returns


def prediction_walk(work: Path):
    import nibabel as nib
    import torch

    Config = first_attr([("liverseg.config", "ExperimentConfig")])
    from_dict = first_attr([("liverseg.config", "from_dict")])
    read_volume = first_attr([("liverseg.io", "read_volume")])
    write_volume = first_attr([("liverseg.io", "write_volume")])
    predict_volume = first_attr([("liverseg.infer", "predict_volume"), ("liverseg.inference.volume", "predict_volume"),
                                 ("liverseg.engine.volume", "predict_volume")])
    rng = np.random.default_rng(0)
    array = rng.normal(0, 30, (96, 80, 40)).astype(np.int16)
    array[20:70, 20:60, 10:30] += 120
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    path = work / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    cfg = from_dict({"model": {"spatial_dims": 3}, "infer": {"roi_size": [64, 64, 32]}}, Config)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 1).eval()

    def walk():
        volume = read_volume(path)
        labels = predict_volume(net, volume, cfg, "cpu")
        write_volume(volume.with_array(labels.astype(np.uint8)), work / "labels.nii.gz")

    return record(walk)


def training_walk(work: Path):
    import yaml

    load_config = first_attr([("liverseg.config", "load_config")])
    train = first_attr([("liverseg.train", "train"), ("liverseg.training.loop", "train")])
    write_phantom_manifest = first_attr([("liverseg.phantoms", "write_phantom_manifest")])
    manifest = write_phantom_manifest(work / "phantoms", {"train": range(2), "val": [5]})
    config = work / "walk.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"labels": ["background", "liver"]},
        "model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "train": {"epochs": 1, "iters_per_epoch": 1, "batch_size": 1, "patch_size": [32, 32, 32],
                  "auto_plan": False, "export_onnx": False}}))

    def walk():
        cfg = load_config(config, [f"data.manifest={manifest}", "train.lr=0.001"])
        train(cfg, work / "run", device="cpu")

    return record(walk, stop_in="losses.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print every hop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, walk in (("prediction", prediction_walk), ("config -> training loop", training_walk)):
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            files = walk(work)
            distinct, hops, returns = summary(files)
            print(f"{name}: {distinct} files, {hops} hops between files, {returns} returns to a file already left")
            wings = [wing for wing, _ in itertools.groupby(wing_of(f) for f in files)]
            distinct, hops, returns = summary(wings)
            print(f"  by wing (sub-package or top-level module): {distinct} wings, {hops} hops, {returns} returns: "
                  + " -> ".join(wings))
            order = list(dict.fromkeys(files))
            print("  files in order of first visit: " + ", ".join(order))
            if args.show:
                print("  " + " -> ".join(files))


if __name__ == "__main__":
    main()
