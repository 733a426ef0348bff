"""2D photographs: reading, standardisation, patch sampling and augmentation, importers, and the whole
train -> predict -> evaluate road through the CLI on a tiny synthetic vessel dataset."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liverseg.cli import main
from liverseg.config import ExperimentConfig, apply_overrides
from liverseg.errors import GeometryError, InputError
from liverseg.io.photos import check_same_size, read_mask, read_photo, read_probability_png
from liverseg.reports.case_report import save_png
from liverseg.datasets.manifest import load_manifest, write_manifest
from liverseg.datasets.photo_manifests import import_chase, import_drive
from liverseg.modalities.photo_data import PhotoPatches, crop_transformed, load_photo_case, select_channels, standardize

SHARED_CHASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chasedb1"


# ----------------------------------------------------------------------------- reading

def test_read_photo_gives_rgb_for_grey_rgba_and_16_bit(tmp_path):
    grey = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    Image.fromarray(deep).save(tmp_path / "d.tif")
    assert np.array_equal(read_photo(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))
    assert read_photo(tmp_path / "a.png").shape == (3, 4, 3) and read_photo(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    scaled = read_photo(tmp_path / "d.tif")
    assert scaled.dtype == np.uint8 and scaled[0, 0, 0] == 0 and scaled[-1, -1, 0] == 255


@pytest.mark.parametrize("encoding", ["0-255.png", "0-1.png", "bit.png", "lossy.jpg", "palette.gif"])
def test_binary_masks_in_any_encoding_read_as_0_1(tmp_path, encoding):
    truth = np.zeros((16, 16), dtype=bool)
    truth[4:12, 6:10] = True
    path = tmp_path / f"m_{encoding}"
    if encoding == "0-255.png":
        Image.fromarray(truth.astype(np.uint8) * 255).save(path)
    elif encoding == "0-1.png":
        Image.fromarray(truth.astype(np.uint8)).save(path)
    elif encoding == "bit.png":
        Image.fromarray(truth).save(path)
    elif encoding == "lossy.jpg":
        Image.fromarray(truth.astype(np.uint8) * 255).save(path, quality=70)
    else:
        Image.fromarray(truth.astype(np.uint8) * 255).convert("P").save(path)
    mask = read_mask(path, 2)
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1}
    agreement = np.mean(mask.astype(bool) == truth)
    assert agreement == 1.0 if encoding != "lossy.jpg" else agreement > 0.97


def test_multiclass_mask_must_hold_class_indices(tmp_path):
    Image.fromarray(np.array([[0, 1], [2, 2]], dtype=np.uint8)).save(tmp_path / "ok.png")
    assert read_mask(tmp_path / "ok.png", 3).tolist() == [[0, 1], [2, 2]]
    Image.fromarray(np.array([[0, 255], [2, 2]], dtype=np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"bad.png.*\[255\].*0\.\.2"):
        read_mask(tmp_path / "bad.png", 3)


def test_unreadable_and_missing_photos_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(InputError, match="broken.png: cannot be read"):
        read_photo(tmp_path / "broken.png")
    with pytest.raises(InputError, match="nope.jpg: no such image"):
        read_photo(tmp_path / "nope.jpg")
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="not a photograph format"):
        read_photo(tmp_path / "x.nii.gz")


def test_size_mismatch_names_both_sizes():
    with pytest.raises(GeometryError, match=r"m.png: mask is 5x4 .* i.png is 6x4"):
        check_same_size(np.zeros((4, 6, 3)), np.zeros((4, 5)), "i.png", "m.png")


def test_16_bit_probability_png_round_trips(tmp_path):
    probability = np.linspace(0, 1, 20).reshape(4, 5)
    save_png(np.rint(probability * 65535).astype(np.uint16), tmp_path / "p.png")
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
    assert np.allclose(read_probability_png(tmp_path / "p.png"), probability, atol=1e-5)


# ----------------------------------------------------------------------------- preprocessing

def test_channels_and_standardisation_inside_the_field_of_view():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    assert np.array_equal(select_channels(rgb, "green")[0], rgb[..., 1] / np.float32(255))
    assert select_channels(rgb, "rgb").shape == (3, 20, 30) and select_channels(rgb, "gray").shape == (1, 20, 30)
    fov = np.zeros((20, 30), dtype=bool)
    fov[3:17, 5:25] = True
    out = standardize(select_channels(rgb, "rgb"), fov)
    assert np.allclose(out[:, fov].mean(axis=1), 0, atol=1e-5)
    assert np.allclose(out[:, fov].std(axis=1), 1, atol=1e-4)
    assert not out[:, ~fov].any()


def test_crop_is_exact_without_augmentation_and_pads_beyond_the_border():
    image = torch.arange(30 * 40, dtype=torch.float32).reshape(1, 30, 40)
    label = (image > 600).long()
    patch, patch_label = crop_transformed(image, label, (15, 20), (6, 8))
    assert torch.equal(patch, image[:, 12:18, 16:24]) and torch.equal(patch_label, label[:, 12:18, 16:24])
    corner, _ = crop_transformed(image, label, (0, 0), (4, 4))
    assert torch.equal(corner[0, 2:, 2:], image[0, :2, :2]) and not corner[0, :2].any()


def test_rotation_by_90_degrees_turns_the_patch_and_keeps_labels_integral():
    image = torch.arange(30 * 40, dtype=torch.float32).reshape(1, 30, 40)
    label = torch.zeros(1, 30, 40, dtype=torch.long)
    label[0, 15, 21:30] = 1  # a horizontal line to the right of the centre
    patch, patch_label = crop_transformed(image, label, (15, 20), (9, 9), angle=math.pi / 2)
    # Rotating the sampling grid by +90 degrees: the output row below the centre reads the column right of it.
    assert patch[0, 4, 4] == image[0, 15, 20] and patch[0, 5, 4] == image[0, 15, 21]
    assert patch[0, 4, 5] == image[0, 14, 20]
    assert patch_label.dtype == torch.long and set(patch_label.unique().tolist()) <= {0, 1}
    assert patch_label[0, 5:, 4].all() and patch_label.sum() == 4  # the line now points down


def _vessel_photo(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RGB 'fundus' photo: reddish disc (the field of view) with darker random line 'vessels'."""
    yy, xx = np.mgrid[:size, :size]
    fov = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (size / 2 - 2) ** 2
    vessels = np.zeros((size, size), dtype=bool)
    for _ in range(4):
        angle, offset = rng.uniform(0, math.pi), rng.uniform(-size / 3, size / 3)
        distance = np.abs((xx - size / 2) * math.sin(angle) - (yy - size / 2) * math.cos(angle) - offset)
        vessels |= distance < rng.uniform(0.6, 1.6)
    vessels &= fov
    rgb = np.zeros((size, size, 3), dtype=np.float64)
    rgb[fov] = (170, 90, 40)
    rgb[vessels] = (120, 40, 20)
    rgb += rng.normal(0, 6, size=rgb.shape) * fov[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8), vessels, fov


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    cases = []
    for index in range(6):
        rgb, vessels, fov = _vessel_photo(rng)
        case = f"img{index}"
        Image.fromarray(rgb).save(root / f"{case}.jpg", quality=95)
        Image.fromarray(vessels.astype(np.uint8) * 255).save(root / f"{case}_label.png")
        Image.fromarray(fov.astype(np.uint8) * 255).save(root / f"{case}_fov.gif")
        cases.append({"id": case, "image": f"{case}.jpg", "label": f"{case}_label.png", "fov": f"{case}_fov.gif"})
    write_manifest(root / "manifest.json", "toy-vessels", {"background": 0, "vessel": 1}, cases,
                   {"train": ["img0", "img1", "img2", "img3"], "val": ["img3"], "test": ["img4", "img5"]})
    return root


def _photo_cfg(augment: dict | None = None, **train) -> ExperimentConfig:
    cfg = apply_overrides(ExperimentConfig(), [
        "data.modality=photo", "data.labels=[background, vessel]", "model.spatial_dims=2",
        "train.patch_size=[16, 16]", "infer.roi_size=[32, 32]", "infer.largest_component=[]"]).validate()
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, augment=replace(cfg.train.augment, **(augment or {})), **train))


def test_patches_are_a_function_of_seed_and_index_and_centre_on_foreground(photo_dataset):
    manifest = load_manifest(photo_dataset / "manifest.json")
    cfg = _photo_cfg(pos_fraction=1.0, augment=dict(affine_prob=0.0, flip_prob=0.0, intensity_prob=0.0,
                                                    noise_std=0.0))
    items = [{"id": c.case_id, "image": str(c.image), "label": str(c.label), "fov": str(c.fov)}
             for c in manifest.split("train")]
    cases = [load_photo_case(item, cfg) for item in items]
    patches = PhotoPatches(cases, cfg, seed=3)
    first, again, other = patches[11], PhotoPatches(cases, cfg, seed=3)[11], PhotoPatches(cases, cfg, seed=4)[11]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(first["image"], other["image"])
    for index in range(20):  # pos_fraction=1: every patch is centred on a vessel pixel
        assert patches[index]["label"][0, 8, 8] == 1


@pytest.mark.parametrize("augmentation", ["affine", "flip", "intensity", "noise"])
def test_each_augmentation_changes_the_patch_as_stated(photo_dataset, augmentation):
    manifest = load_manifest(photo_dataset / "manifest.json")
    off = dict(affine_prob=0.0, flip_prob=0.0, intensity_prob=0.0, noise_std=0.0)
    on = dict(off, **{"affine": dict(affine_prob=1.0, rotate_deg=90.0), "flip": dict(flip_prob=1.0),
                      "intensity": dict(intensity_prob=1.0), "noise": dict(noise_std=0.5)}[augmentation])
    items = [{"id": c.case_id, "image": str(c.image), "label": str(c.label), "fov": str(c.fov)}
             for c in manifest.split("train")]
    plain_cfg, aug_cfg = _photo_cfg(off, pos_fraction=1.0), _photo_cfg(on, pos_fraction=1.0)
    plain = PhotoPatches([load_photo_case(i, plain_cfg) for i in items], plain_cfg, seed=1)
    augmented = PhotoPatches([load_photo_case(i, aug_cfg) for i in items], aug_cfg, seed=1)
    changed = 0
    for index in range(8):
        a, b = plain[index], augmented[index]
        if augmentation == "flip":  # both axes flipped: the same pixels, mirrored
            assert torch.equal(b["image"], a["image"].flip(-1).flip(-2))
            assert torch.equal(b["label"], a["label"].flip(-1).flip(-2))
        if augmentation in ("intensity", "noise"):  # pixel values change, the labels do not
            assert torch.equal(a["label"], b["label"])
        changed += not torch.equal(a["image"], b["image"])
    assert changed == 8


# ----------------------------------------------------------------------------- importers

def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_drive_importer_reads_the_public_layout(tmp_path):
    for part, numbers in (("training", range(21, 41)), ("test", range(1, 21))):
        for n in numbers:
            _touch(tmp_path / part / "images" / f"{n:02d}_{part}.tif")
            _touch(tmp_path / part / "1st_manual" / f"{n:02d}_manual1.gif")
            _touch(tmp_path / part / "mask" / f"{n:02d}_{part}_mask.gif")
    manifest = import_drive(tmp_path)
    assert len(manifest["splits"]["train"]) == 20 and len(manifest["splits"]["test"]) == 20
    assert manifest["splits"]["val"] == ["39_training", "40_training"]
    first = manifest["cases"][0]
    assert first == {"id": "21_training", "image": "training/images/21_training.tif",
                     "label": "training/1st_manual/21_manual1.gif", "fov": "training/mask/21_training_mask.gif"}
    (tmp_path / "test" / "mask" / "07_test_mask.gif").unlink()
    with pytest.raises(InputError, match="07_test_mask.gif: missing field-of-view mask"):
        import_drive(tmp_path)


def test_chase_importer_splits_first_20_and_last_8_in_the_flat_official_layout(tmp_path):
    for n in range(1, 15):
        for side in "LR":
            _touch(tmp_path / f"Image_{n:02d}{side}.jpg")
            _touch(tmp_path / f"Image_{n:02d}{side}_1stHO.png")
            _touch(tmp_path / f"Image_{n:02d}{side}_2ndHO.png")
    manifest = import_chase(tmp_path)
    splits = manifest["splits"]
    assert splits["train"][0] == "Image_01L" and splits["train"][-1] == "Image_10R" and len(splits["train"]) == 20
    assert splits["test"] == [f"Image_{n:02d}{s}" for n in range(11, 15) for s in "LR"]
    assert all("fov" not in c for c in manifest["cases"])
    assert manifest["cases"][0]["label"] == "Image_01L_1stHO.png"


@pytest.mark.skipif(not SHARED_CHASE.is_dir(), reason="../shared/data/chasedb1 not present")
def test_chase_importer_on_the_shared_copy_finds_fov_masks():
    manifest = import_chase(SHARED_CHASE)
    assert len(manifest["cases"]) == 28 and all("fov" in c for c in manifest["cases"])
    assert manifest["splits"]["test"][0] == "Image_11L"


# ----------------------------------------------------------------------------- the CLI road

def test_train_predict_evaluate_photos_through_the_cli(photo_dataset, tmp_path, capsys):
    manifest = photo_dataset / "manifest.json"
    run = tmp_path / "run"
    code = main(["train", "--config", "configs/smoke_2d.yaml", "--run-dir", str(run), "-q",
                 "--set", f"data.manifest={manifest}", "--set", "data.modality=photo",
                 "--set", "data.labels=[background, vessel]", "--set", "photo.color=green",
                 "--set", "model.slices_2d=1", "--set", "train.patch_size=[32, 32]",
                 "--set", "train.epochs=4", "--set", "train.iters_per_epoch=10", "--set", "train.lr=0.01",
                 "--set", "train.val_every=4", "--set", "infer.roi_size=[32, 32]",
                 "--set", "infer.largest_component=[]", "--set", "train.augment.affine_prob=0",
                 "--set", "photo.fov_threshold=10"])
    assert code == 0
    out = tmp_path / "pred"
    assert main(["predict", "--manifest", str(manifest), "--split", "test", "-o", str(out), "--model", str(run),
                 "-q"]) == 0
    for case in ("img4", "img5"):
        mask = np.asarray(Image.open(out / case / "mask.png"))
        assert mask.shape == (48, 48) and set(np.unique(mask).tolist()) <= {0, 255}
        probability = Image.open(out / case / "probability.png")
        assert probability.mode.startswith("I") and probability.size == (48, 48)
        assert np.asarray(Image.open(out / case / "overlay.png")).shape == (48, 48, 3)
    # plain photographs (a file, and a folder of them) predict too, named by their stems
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.jpg").write_bytes((photo_dataset / "img5.jpg").read_bytes())
    assert main(["predict", str(photo_dataset / "img4.jpg"), str(loose), "-o", str(tmp_path / "plain"),
                 "--model", str(run), "-q"]) == 0
    assert (tmp_path / "plain" / "img4" / "mask.png").is_file() and (tmp_path / "plain" / "a" / "overlay.png").is_file()
    # without its FOV mask the field of view comes from photo.fov_threshold: the dark corners
    # stay background, and the mask is close to the one predicted with the true FOV mask
    plain_mask = np.asarray(Image.open(tmp_path / "plain" / "img4" / "mask.png"))
    assert not plain_mask[:4, :4].any() and not plain_mask[-4:, -4:].any()
    assert np.mean(plain_mask == np.asarray(Image.open(out / "img4" / "mask.png"))) > 0.8
    capsys.readouterr()
    assert main(["evaluate", str(out), "--manifest", str(manifest), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "worst Dice" in printed
    with (out / "evaluation" / "per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["img4", "img5"] and all(r["name"] == "vessel" for r in rows)
    # Dark lines on a flat disc are easy: even a few iterations rank vessel pixels well above the rest.
    assert all(float(r["auc"]) > 0.9 for r in rows), rows
    assert all(r["unit"] == "px" for r in rows)
    for case in ("img4", "img5"):
        assert Image.open(out / "evaluation" / "qc" / f"{case}.png").size == (48, 48)
    with (out / "evaluation" / "summary.csv").open() as handle:
        summary = {(r["label"], r["metric"]): r for r in csv.DictReader(handle)}
    assert float(summary[("vessel", "dice")]["mean"]) == pytest.approx(np.mean([float(r["dice"]) for r in rows]))


def test_manifest_import_chase_through_the_cli(tmp_path, capsys):
    root = tmp_path / "CHASEDB1"
    for n in range(1, 15):
        for side in "LR":
            _touch(root / f"Image_{n:02d}{side}.jpg")
            _touch(root / f"Image_{n:02d}{side}_1stHO.png")
            _touch(root / "mask" / f"Image_{n:02d}{side}.png")
    assert main(["manifest", "import", "chase", str(root), "-o", str(tmp_path / "m.json")]) == 0
    manifest = load_manifest(tmp_path / "m.json", root)
    assert [c.case_id for c in manifest.split("test")][:2] == ["Image_11L", "Image_11R"]
    assert manifest.split("test")[0].fov == root / "mask" / "Image_11L.png"
    assert manifest.labels == {"background": 0, "vessel": 1}


def test_clahe_evens_out_illumination_and_keeps_the_range():
    # a left-to-right illumination ramp with faint stripes: CLAHE raises the stripes' local contrast in the dark half
    ramp = np.tile(np.linspace(20, 200, 64), (64, 1))
    stripes = np.where((np.arange(64) // 4) % 2 == 0, 6.0, 0.0)[:, None]
    rgb = np.repeat(np.clip(ramp + stripes, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    plain = select_channels(rgb, "green")[0]
    equalised = select_channels(rgb, "green", clahe=0.02)[0]
    assert equalised.min() >= 0 and equalised.max() <= 1
    dark = slice(0, 16)
    contrast = lambda image: image[0:4, dark].mean() - image[4:8, dark].mean()  # noqa: E731
    assert contrast(equalised) > 2 * contrast(plain) > 0


def test_loss_kinds():
    from liverseg.training.losses import SegmentationLoss

    logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # (N=1, K=2, 1, 2): confident and right
    targets = torch.tensor([[[[0, 1]]]])
    for kind in ("dice_ce", "ce", "dice"):
        assert float(SegmentationLoss(kind)(logits, targets)) < 0.01
        assert float(SegmentationLoss(kind)(-logits, targets)) > 0.5
    assert float(SegmentationLoss("ce")(logits, targets)) == pytest.approx(math.log1p(math.exp(-8.0)), rel=1e-4)
    with pytest.raises(ValueError, match="unknown loss"):
        SegmentationLoss("focal")


def test_automatic_fov_finds_the_lit_disc():
    rgb, _, fov = _vessel_photo(np.random.default_rng(1))
    from liverseg.modalities.photo_data import automatic_fov

    assert np.mean(automatic_fov(rgb, 10) == fov) > 0.99


def test_rgb_photos_train_and_predict_with_three_input_channels(photo_dataset, tmp_path):
    """photo.color=rgb: the network is built for the photo's 3 channels, not the CT's 1."""
    manifest = photo_dataset / "manifest.json"
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/smoke_2d.yaml", "--run-dir", str(run), "-q",
                 "--set", f"data.manifest={manifest}", "--set", "data.modality=photo",
                 "--set", "data.labels=[background, vessel]", "--set", "photo.color=rgb",
                 "--set", "model.slices_2d=1", "--set", "train.patch_size=[32, 32]", "--set", "train.epochs=1",
                 "--set", "train.iters_per_epoch=2", "--set", "infer.roi_size=[32, 32]",
                 "--set", "infer.largest_component=[]"]) == 0
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    first_conv = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 4)
    assert first_conv.shape[1] == 3
    assert main(["predict", str(photo_dataset / "img4.jpg"), "-o", str(tmp_path / "out"), "--model", str(run),
                 "-q"]) == 0
    assert (tmp_path / "out" / "img4" / "mask.png").is_file()
