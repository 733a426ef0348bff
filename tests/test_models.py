"""One shared suite for every registered model, in 2D and 3D (as segmentation_models.pytorch's
tests/models/base.py does): forward shape on odd sizes, deep-supervision heads, backward,
state-dict round trip, deterministic eval."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from liverseg.config import ModelConfig
from liverseg.errors import ConfigError
from liverseg.training.losses import SegmentationLoss, deep_supervision_weights
from liverseg.models import MODELS, SizeAdapter, build_model, input_channels

ODD_SHAPES = {3: (19, 22, 17), 2: (37, 29)}
CASES = [(name, dims) for name in sorted(MODELS) for dims in (3, 2)]


# Per-model departures from the tiny config: kul_unet sub-samples by an odd factor (see its ConfigError).
MODEL_CHANGES = {"kul_unet": {"strides": (3, 3, 3)}}


def tiny_config(name: str, dims: int, **changes) -> ModelConfig:
    cfg = ModelConfig(name=name, spatial_dims=dims, channels=(8, 16, 32, 32), strides=(2, 2, 2),
                      num_res_units=1, norm="instance", deep_supervision=True,
                      slices_2d=3 if dims == 2 else 1)
    return dataclasses.replace(cfg, **{**MODEL_CHANGES.get(name, {}), **changes})


def make(name: str, dims: int, seed: int = 0, **changes) -> tuple[SizeAdapter, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = tiny_config(name, dims, **changes)
    model = build_model(cfg, input_channels(cfg), 2)
    batch = 2 if dims == 2 else 1
    x = torch.randn(batch, input_channels(cfg), *ODD_SHAPES[dims])
    return model, x


@pytest.mark.parametrize("name,dims", CASES)
def test_forward_returns_full_resolution_logits_for_odd_sizes(name, dims):
    model, x = make(name, dims)
    expected = (x.shape[0], 2, *ODD_SHAPES[dims])
    model.train()
    assert tuple(model(x).shape) == expected
    model.eval()
    with torch.no_grad():
        assert tuple(model(x).shape) == expected


@pytest.mark.parametrize("name,dims", CASES)
def test_deep_supervision_heads_are_full_resolution_and_lead_with_the_main_output(name, dims):
    model, x = make(name, dims)
    model.train()
    torch.manual_seed(1)
    heads = model.deep_supervision_outputs(x)
    torch.manual_seed(1)
    main = model(x)
    assert all(tuple(h.shape) == tuple(main.shape) for h in heads)
    torch.testing.assert_close(heads[0], main)
    if name in ("dynunet", "ma_unet"):
        assert len(heads) >= 2, f"{name} must have auxiliary deep-supervision heads"
    else:
        assert len(heads) == 1


@pytest.mark.parametrize("name,dims", CASES)
def test_backward_reaches_every_parameter(name, dims):
    model, x = make(name, dims)
    model.train()
    target = torch.randint(0, 2, (x.shape[0], 1, *ODD_SHAPES[dims]))
    loss = SegmentationLoss()(model.deep_supervision_outputs(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


@pytest.mark.parametrize("name,dims", CASES)
def test_state_dict_round_trip_and_deterministic_eval(name, dims):
    model, x = make(name, dims, seed=0)
    model.train()
    model(x)  # move batch-norm running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    clone, _ = make(name, dims, seed=123)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), first)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        build_model(dataclasses.replace(tiny_config("unet", 3), name="vnet"), 1, 2)
    assert "vnet" in str(error.value) and all(name in str(error.value) for name in MODELS)


def test_deep_supervision_weights_halve_and_sum_to_one():
    weights = deep_supervision_weights(4)
    assert sum(weights) == pytest.approx(1.0)
    assert all(a / b == pytest.approx(2.0) for a, b in zip(weights, weights[1:]))
    assert deep_supervision_weights(1) == [1.0]


def test_deep_supervision_loss_is_the_weighted_sum_of_head_losses():
    torch.manual_seed(0)
    target = torch.randint(0, 2, (1, 1, 8, 8, 8))
    heads = [torch.randn(1, 2, 8, 8, 8) for _ in range(3)]
    loss_fn = SegmentationLoss()
    expected = sum(w * loss_fn(h, target) for w, h in zip(deep_supervision_weights(3), heads))
    torch.testing.assert_close(loss_fn(heads, target), expected)


def test_ma_unet_uses_the_configured_aspp_dilations():
    cfg = tiny_config("ma_unet", 3, aspp_dilations=(3, 5, 7))
    model = build_model(cfg, 1, 2)
    dilations = {m.dilation for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.dilation != (1, 1, 1)}
    assert dilations == {(3, 3, 3), (5, 5, 5), (7, 7, 7)}


class _NeighbourDifference(torch.nn.Module):
    """Logits (slice below, slice above): softmax class 1 = sigmoid(above - below)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0], x[:, 2]], dim=1)


def test_2d_prediction_feeds_each_slice_with_its_neighbours_in_order():
    from liverseg.config import ExperimentConfig, InferConfig, TrainConfig
    from liverseg.engine.tiling import network_probabilities

    cfg = ExperimentConfig(model=ModelConfig(spatial_dims=2, slices_2d=3), train=TrainConfig(patch_size=(8, 8)),
                           infer=InferConfig(roi_size=(8, 8), sw_batch_size=5)).validate()
    depth = 7
    image = torch.arange(depth, dtype=torch.float32).expand(11, 9, depth).contiguous()  # value = slice index
    probabilities = network_probabilities(_NeighbourDifference(), image, cfg, torch.device("cpu"))
    assert tuple(probabilities.shape) == (2, 11, 9, depth)
    expected = torch.sigmoid(torch.tensor([1.0] + [2.0] * (depth - 2) + [1.0]))  # edge slices are repeated
    np.testing.assert_allclose(probabilities[1, 5, 4], expected.numpy(), atol=1e-6)
