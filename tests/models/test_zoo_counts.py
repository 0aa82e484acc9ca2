"""Parameter counts equal the official implementations', in training and deployed form.

The "official" numbers were computed by instantiating the official model definitions (repository and
commit next to each table) and counting `p.numel()` over `parameters()`, in the training form and,
where the model re-parameterizes, in the deployed form (`deploy=True` / after the official merge). The
paper's rounded figure is given for comparison; where it disagrees with the code, the code is the
reference (UniRepLKNet's tables count the deployed model).
"""

from __future__ import annotations

import pytest
import torch

from convforge.models import create_model


def count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


# AILab-CVC/UniRepLKNet @ b5677d8, unireplknet.py: (training form, deployed form, paper table)
UNIREPLKNET = {
    "unireplknet_a": (4_649_060, 4_437_300, "4.4M"),
    "unireplknet_f": (6_489_328, 6_235_216, "6.2M"),
    "unireplknet_p": (11_080_520, 10_741_704, "10.7M"),
    "unireplknet_n": (18_818_880, 18_318_560, "18.3M"),
    "unireplknet_t": (31_693_420, 31_037_980, "31M"),
    "unireplknet_s": (56_456_704, 55_645_984, "56M"),
}


# DingXiaoH/RepLKNet-pytorch @ b76808a, replknet.py: (training form, small_kernel_merged=True, paper table)
REPLKNET = {
    "replknet_31b": (79_864_168, 79_527_272, "79M"),
    "replknet_31l": (172_671_016, 172_165_672, "172M"),
    "replknet_xl": (335_435_752, 335_399_656, "335M"),
}

REPARAMETERIZABLE = {**UNIREPLKNET, **REPLKNET}

# raoyongming/HorNet @ ac9e210, hornet.py: (parameters, paper table)
HORNET = {
    "hornet_tiny_7x7": (22_409_512, "22M"),
    "hornet_tiny_gf": (22_991_848, "23M"),
    "hornet_small_7x7": (49_528_264, "50M"),
    "hornet_small_gf": (50_401_768, "50M"),
    "hornet_base_7x7": (87_256_680, "87M"),
    "hornet_base_gf": (88_421_352, "88M"),
}


@pytest.mark.parametrize("name", sorted(REPARAMETERIZABLE))
def test_training_and_deployed_counts(name):
    train, deploy, _paper = REPARAMETERIZABLE[name]
    assert count(name) == train
    assert count(name, deploy=True) == deploy


# XingangPan/IBN-Net @ d167338, ibnnet/resnet_ibn.py: (parameters, note). The paper tabulates no counts:
# IBN-a adds none to its ResNet (half of each BN's affine pair becomes IN's); IBN-b adds the IN affines.
IBNNET = {
    "resnet18_ibn_a": (11_689_512, "= ResNet-18"),
    "resnet34_ibn_a": (21_797_672, "= ResNet-34"),
    "resnet50_ibn_a": (25_557_032, "= ResNet-50"),
    "resnet101_ibn_a": (44_549_160, "= ResNet-101"),
    "resnet18_ibn_b": (11_689_896, "ResNet-18 + 384"),
    "resnet34_ibn_b": (21_798_056, "ResNet-34 + 384"),
    "resnet50_ibn_b": (25_558_568, "ResNet-50 + 1,536"),
    "resnet101_ibn_b": (44_550_696, "ResNet-101 + 1,536"),
}

# Coderx7/SimpleNet_Pytorch @ 4334c57, imagenet/simplenet.py, counted with 10 classes for CIFAR and 1000 for
# ImageNet: (parameters, paper/README). "460k" is the official name of a network whose code has 386k.
SIMPLENET = {
    "simplenet_cifar_5m": (5_498_378, "5.48M"),
    "simplenet_cifar_5m_extra_pool": (5_498_378, "5.48M"),
    "simplenet_cifar_460k": (385_790, "460k (name only)"),
    "simplenet_cifar_310k": (312_362, "310k"),
    "simplenetv1_5m_m1": (5_752_808, "5.75M"),
    "simplenetv1_5m_m2": (5_752_808, "5.75M"),
    "simplenetv1_9m_m1": (9_508_968, "9.51M"),
    "simplenetv1_9m_m2": (9_508_968, "9.51M"),
    "simplenetv1_small_m1_05": (1_506_792, "1.51M"),
    "simplenetv1_small_m2_05": (1_506_792, "1.51M"),
    "simplenetv1_small_m1_075": (3_287_272, "3.29M"),
    "simplenetv1_small_m2_075": (3_287_272, "3.29M"),
}

WITHOUT_DEPLOYED_FORM = {**HORNET, **IBNNET, **SIMPLENET}


@pytest.mark.parametrize("name", sorted(WITHOUT_DEPLOYED_FORM))
def test_counts_of_models_without_a_deployed_form(name):
    num_classes = 10 if name.startswith("simplenet_cifar") else 1000
    assert count(name, num_classes=num_classes) == WITHOUT_DEPLOYED_FORM[name][0]
