"""Batched device transforms agree with the per-image references (torch padding, timm, torchvision)."""

from __future__ import annotations

import numpy as np
import pytest
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from convforge.data.transforms import (
    AugmentConfig,
    Preprocessing,
    TrainAugment,
    eval_transform,
    random_resized_crop,
    to_float_nchw,
    translate_and_flip,
)

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _batch(n=6, h=16, w=20, c=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8))


def test_translate_and_flip_equals_reflect_pad_then_crop():
    images, pad = _batch(), 3
    flips = torch.tensor([True, False, True, False, False, True])
    out = translate_and_flip(images, pad, flips, torch.Generator().manual_seed(7))
    shifts = torch.randint(-pad, pad + 1, (6, 2), generator=torch.Generator().manual_seed(7))
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect")
    for i in range(6):
        dy, dx = shifts[i].tolist()
        crop = padded[i, :, pad + dy : pad + dy + 16, pad + dx : pad + dx + 20]
        if flips[i]:
            crop = crop.flip(-1)
        torch.testing.assert_close(out[i].permute(2, 0, 1).float(), crop, rtol=0, atol=0)


def test_normalisation_matches_torchvision():
    images = _batch()
    prep = Preprocessing(input_size=(16, 20), **IMAGENET)
    ours = to_float_nchw(images, prep)
    reference = TF.normalize(images.permute(0, 3, 1, 2).float() / 255, IMAGENET["mean"], IMAGENET["std"])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_grayscale_uses_averaged_statistics():
    prep = Preprocessing(input_size=(8, 8), channels=1, **IMAGENET)
    assert prep.mean == (pytest.approx(sum(IMAGENET["mean"]) / 3),)


def test_random_resized_crop_of_the_whole_image_is_the_identity():
    x = to_float_nchw(_batch(h=24, w=24), Preprocessing(input_size=(24, 24), **IMAGENET))
    out = random_resized_crop(
        x,
        (24, 24),
        (1.0, 1.0),
        (1.0, 1.0),
        torch.zeros(6, dtype=torch.bool),
        torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_random_resized_crop_windows_are_exact_sub_images():
    x = to_float_nchw(_batch(n=4, h=32, w=32), Preprocessing(input_size=(32, 32), **IMAGENET))
    out = random_resized_crop(
        x,
        (16, 16),
        (0.25, 0.25),
        (1.0, 1.0),
        torch.zeros(4, dtype=torch.bool),
        torch.Generator().manual_seed(1),
    )
    for i in range(4):
        windows = x[i].unfold(1, 16, 1).unfold(2, 16, 1)  # C, top, left, 16, 16
        distance = (windows - out[i][:, None, None]).abs().amax(dim=(0, 3, 4))
        assert distance.min() < 1e-4  # equals one 16x16 window of the input


def test_random_resized_crop_scales_cover_the_range():
    x = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).repeat(400, 1, 1, 1)
    out = random_resized_crop(
        x,
        (8, 8),
        (0.1, 0.9),
        (3 / 4, 4 / 3),
        torch.zeros(400, dtype=torch.bool),
        torch.Generator().manual_seed(2),
    )
    # The spread of pixel coordinates inside each crop measures its size.
    rows = (out // 64).amax(dim=(1, 2, 3)) - (out // 64).amin(dim=(1, 2, 3))
    assert rows.min() >= 10 and rows.max() <= 63 and rows.float().std() > 5


@pytest.mark.parametrize("crop_pct,interpolation", [(0.875, "bilinear"), (1.0, "bicubic")])
def test_eval_transform_matches_timm(crop_pct, interpolation):
    yy, xx = np.mgrid[0:72, 0:96]
    smooth = np.stack([yy * 3, xx * 2, (yy + xx)], axis=-1).clip(0, 255).astype(np.uint8)
    transform = timm.data.create_transform(
        input_size=(3, 48, 48), crop_pct=crop_pct, interpolation=interpolation, **IMAGENET
    )
    reference = transform(Image.fromarray(smooth))
    prep = Preprocessing(input_size=(48, 48), crop_pct=crop_pct, interpolation=interpolation, **IMAGENET)
    ours = eval_transform(torch.from_numpy(smooth)[None], prep)[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 0.02  # PIL and torch resamplers differ by rounding only


def test_train_augment_with_mixup_gives_soft_targets():
    augment = TrainAugment(
        AugmentConfig(crop="pad", pad=2, mixup=0.2, cutmix=1.0),
        Preprocessing(input_size=(16, 20), **IMAGENET),
        num_classes=5,
        label_smoothing=0.1,
    )
    x, targets = augment(_batch(), torch.tensor([0, 1, 2, 3, 4, 0]), torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 16, 20) and targets.shape == (6, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))


@pytest.mark.parametrize("mix", [{"mixup": 0.8}, {"cutmix": 1.0}])
def test_mixup_and_cutmix_mix_the_images_and_their_labels(mix):
    """Without label smoothing, a target row with two classes can only come from mixing, and the mixed
    images must differ from the same batch augmented without it (a mixer that did nothing once passed)."""
    preprocessing = Preprocessing(input_size=(16, 20), **IMAGENET)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])

    def augmented(config: AugmentConfig):
        augment = TrainAugment(config, preprocessing, num_classes=5, label_smoothing=0.0)
        return augment(_batch(), labels, torch.Generator().manual_seed(0))

    plain_x, plain_targets = augmented(AugmentConfig(crop="none", hflip=0.0))
    mixed_x, mixed_targets = augmented(AugmentConfig(crop="none", hflip=0.0, mix_prob=1.0, **mix))
    assert torch.equal(plain_targets, labels)  # hard labels when nothing mixes
    assert ((mixed_targets > 0).sum(1) >= 2).any()  # two classes in a row: mixed
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(6))
    assert not torch.equal(mixed_x, plain_x)


def test_same_generator_same_augmentation():
    augment = TrainAugment(AugmentConfig(crop="rrc"), Preprocessing(input_size=(12, 12), **IMAGENET), 3)
    images, labels = _batch(), torch.zeros(6, dtype=torch.long)
    a, _ = augment(images, labels, torch.Generator().manual_seed(5))
    b, _ = augment(images, labels, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
