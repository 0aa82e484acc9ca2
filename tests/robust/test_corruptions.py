"""Corruptions: identity at severity 0, strength rising with severity, agreement with the libraries
the original code used where they are here (scipy, colorsys, PIL), and clear errors."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from convforge.data import load_dataset
from convforge.errors import ConfigError
from convforge.robust.corruptions import (
    FAMILIES,
    PARAMETERS,
    box_resize,
    corrupt,
    disk_kernel,
    fog_mapsize,
    gaussian_blur,
    hsv_to_rgb,
    parse_severities,
    plasma_fractal,
    resolve_families,
    rgb_to_hsv,
)
from convforge.robust.evaluate import CorruptionTable, corruption_errors
from tests.helpers import TINY_SHAPES

pytestmark = pytest.mark.xdist_group("corruptions")  # its module fixtures are built once, on one worker

# The original parameters are not monotone in pixel distance for these two: saturate goes from
# desaturating (x0.3, x0.1) to over-saturating (x1.5 ... x20), and elastic_transform trades a large
# global affine warp at low severity for local warping at high severity.
NOT_MONOTONE = {"saturate", "elastic_transform"}


@pytest.fixture(scope="module")
def clean_images():
    test = load_dataset(TINY_SHAPES).test
    return torch.from_numpy(test.gather(np.arange(16))).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("preset, size", [("cifar", 32), ("imagenet", 224)])
def test_severity_zero_is_the_identity_and_strength_rises(clean_images, preset, size):
    images = F.interpolate(clean_images[:6], size=size, mode="bilinear") if size != 32 else clean_images
    for family in FAMILIES:
        assert torch.equal(corrupt(images, family, 0, preset=preset), images)
        distances = []
        for severity in range(1, 6):
            out = corrupt(images, family, severity, preset=preset, generator=torch.Generator().manual_seed(0))
            assert out.shape == images.shape and out.dtype == images.dtype, family
            assert out.min() >= 0 and out.max() <= 1, family
            distances.append((out - images).flatten(1).norm(dim=1).mean().item())
        assert distances[0] > 0, family
        if family not in NOT_MONOTONE:
            # non-decreasing, allowing 1% for severities whose parameters barely differ (motion blur 3 and 4)
            assert all(b >= a * 0.99 for a, b in zip(distances, distances[1:], strict=False)), (family, distances)


def test_same_generator_same_corruption(clean_images):
    a = corrupt(clean_images, "shot_noise", 3, generator=torch.Generator().manual_seed(5))
    b = corrupt(clean_images, "shot_noise", 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_gaussian_blur_agrees_with_scipy():
    x = torch.rand(2, 3, 20, 27, dtype=torch.float64)
    for sigma, mode in ((0.7, "nearest"), (2.0, "nearest"), (3.0, "reflect")):
        ours = gaussian_blur(x, sigma, mode=mode)
        reference = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode=mode, truncate=4.0)
        assert np.abs(ours.numpy() - reference).max() < 1e-12
    wide = gaussian_blur(x, 40.0, truncate=3.0, mode="reflect")  # wider than the image, as elastic's
    reference = gaussian_filter(x.numpy(), sigma=(0, 0, 40.0, 40.0), mode="reflect", truncate=3.0)
    assert np.abs(wide.numpy() - reference).max() < 1e-12


def test_hsv_round_trip_agrees_with_colorsys():
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    x[0, :, 0, 0] = 0.4  # grey: hue and saturation 0
    hsv = rgb_to_hsv(x)
    for i in range(9):
        for j in range(9):
            assert np.allclose(hsv[0, :, i, j].numpy(), colorsys.rgb_to_hsv(*x[0, :, i, j].tolist()), atol=1e-12)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-12)


def test_box_resize_equals_pil_box():
    pixels = np.random.default_rng(0).random((37, 41)).astype(np.float32)
    for size in ((22, 24), (37 * 2, 41 * 3), (9, 40)):
        reference = np.asarray(Image.fromarray(pixels, mode="F").resize(size[::-1], Image.Resampling.BOX))
        ours = box_resize(torch.from_numpy(pixels)[None, None].double(), size)[0, 0].numpy()
        assert np.abs(ours - reference).max() < 1e-5, size


def test_kernels_and_fractals_are_normalised():
    for radius, blur in ((0.3, 0.4), (3, 0.1), (6, 0.5)):
        assert disk_kernel(radius, blur).sum().item() == pytest.approx(1.0)
    # from radius 8 the disk touches its grid's edge and cv2's reflecting border adds mass, as in the original
    assert disk_kernel(8, 0.5).sum().item() > 1 and disk_kernel(10, 0.5).sum().item() > 1
    fog = plasma_fractal(3, 64, 2.0, torch.Generator().manual_seed(0))
    assert fog.shape == (3, 64, 64) and fog.min() == 0 and fog.max() == 1


def test_names_and_severities_get_clear_messages():
    assert resolve_families("all") == list(FAMILIES)
    assert resolve_families("jpeg, motion") == ["jpeg_compression", "motion_blur"]
    with pytest.raises(ConfigError, match="unknown corruption 'gausian_noise'.*Did you mean: gaussian_noise"):
        resolve_families("gausian_noise")
    with pytest.raises(ConfigError, match="unknown corruption 'frost'"):
        resolve_families("frost")
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("5,1,3") == [1, 3, 5]
    for bad in ("0-5", "6", "2-7"):
        with pytest.raises(ConfigError, match="severities run from 1 to 5"):
            parse_severities(bad)
    with pytest.raises(ConfigError, match="like 1-5"):
        parse_severities("one")
    with pytest.raises(ConfigError, match="severity must be 0 to 5"):
        corrupt(torch.rand(1, 3, 8, 8), "fog", 6)


def test_corruption_errors_against_a_baseline():
    model = CorruptionTable("cifar", 100, 0.9, {"fog": {1: 0.8, 2: 0.6}, "contrast": {1: 0.7, 2: 0.5}})
    baseline = CorruptionTable("cifar", 100, 0.8, {"fog": {1: 0.6, 2: 0.4}, "contrast": {1: 0.7, 2: 0.5}})
    errors = corruption_errors(model, baseline, "base")
    assert errors.corruption_error["fog"] == pytest.approx((0.2 + 0.4) / (0.4 + 0.6))
    assert errors.corruption_error["contrast"] == pytest.approx(1.0)
    assert errors.mce == pytest.approx((0.6 + 1.0) / 2)
    # relative: (E - E_clean) summed over severities, over the baseline's
    assert errors.relative_corruption_error["fog"] == pytest.approx((0.6 - 2 * 0.1) / (1.0 - 2 * 0.2))
    assert model.relative_robustness("fog") == pytest.approx(0.7 / 0.9)


def _original_plasma_fractal(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """The diamond-square fractal as make_cifar_c.py / make_imagenet_c.py describe it, one map at a
    time in NumPy (written for this test from the algorithm, independently of convforge's batched one)."""
    grid = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        total = corners + np.roll(corners, -1, axis=0)
        total = total + np.roll(total, -1, axis=1)
        grid[half::step, half::step] = total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)
        centres, corners = grid[half::step, half::step], grid[0::step, 0::step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0::step, half::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half::step, 0::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def _spread_and_roughness(maps: np.ndarray) -> tuple[float, float]:
    """Mean per-map standard deviation and mean absolute difference of neighbouring pixels."""
    return float(maps.std(axis=(1, 2)).mean()), float(np.abs(np.diff(maps, axis=2)).mean())


@pytest.mark.parametrize("severity", [1, 4])
def test_cifar_fog_layer_has_the_spatial_statistics_of_the_original_32_px_fractal(severity):
    """The fog layer recovered from corrupt() on a grey image matches CIFAR-10-C's fractal (drawn at
    32 px) in spread and roughness; a 32-px crop of a 256-px fractal is several times flatter."""
    c0, decay = PARAMETERS["fog"]["cifar"][severity - 1]
    grey = torch.full((300, 1, 32, 32), 0.5, dtype=torch.float64)
    out = corrupt(grey, "fog", severity, preset="cifar", generator=torch.Generator().manual_seed(0)).double()
    fog = ((out * (0.5 + c0) / 0.5 - 0.5) / c0)[:, 0].numpy()
    rng = np.random.default_rng(0)
    original = np.stack([_original_plasma_fractal(32, decay, rng) for _ in range(300)])
    ours, theirs = _spread_and_roughness(fog), _spread_and_roughness(original)
    assert ours == pytest.approx(theirs, rel=0.1)
    cropped = np.stack([_original_plasma_fractal(256, decay, rng)[:32, :32] for _ in range(100)])
    flat = _spread_and_roughness(cropped)
    assert flat[0] < theirs[0] / 2 and flat[1] < theirs[1] / 3  # what the old 256-px map gave
    assert fog_mapsize("cifar", 32, 32) == 32 and fog_mapsize("imagenet", 224, 224) == 256


def test_stored_as_uint8_truncates_like_the_published_datasets():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    generator = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    as_float = corrupt(images, "gaussian_noise", 3, generator=generator())
    stored = corrupt(images, "gaussian_noise", 3, generator=generator(), stored_as_uint8=True)
    assert torch.equal(stored * 255, (stored * 255).round())  # whole grey levels
    assert torch.equal(stored, torch.floor(as_float.double() * 255 + 1e-6).div(255).float())
    assert 0.4 < float((as_float - stored).mean() * 255) < 0.6  # the half-level offset the issue names
    levels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 255
    same = corrupt(levels.expand(1, 3, 16, 16), "contrast", 1, preset="cifar", stored_as_uint8=True)
    assert torch.equal(same * 255, (same * 255).round())
