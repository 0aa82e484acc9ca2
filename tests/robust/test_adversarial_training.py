"""Adversarial training on real digits (MNIST) gives a model that PGD fools much less often than a normal
one, at almost no cost in clean accuracy: the classic result (Madry et al.; Wong et al.'s FGSM with a
random start), large enough here to hold on every CPU kind."""

from __future__ import annotations

import torch

from convforge import TrainConfig, train
from convforge.checkpoint import load_model
from convforge.data import load_dataset
from convforge.data.transforms import pixel_transform
from convforge.models.prepared import model_prepared
from convforge.robust.attacks import PixelSpaceModel, pgd
from convforge.robust.evaluate import accuracy
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS

EPS = 0.1  # L-inf on [0, 1] pixels, the scale MNIST's robustness results use
TRAINING = {"epochs": 6, "batch_size": 32, "lr": 4e-3, "crop": "none", "val_fraction": 0.1}


def pgd_accuracy(run_path, data: str) -> tuple[float, float]:
    model, spec = load_model(run_path)
    test = load_dataset(data).test
    images = pixel_transform(torch.from_numpy(test.gather(torch.arange(300).numpy())), spec.preprocessing)
    labels = torch.from_numpy(test.labels[:300])
    pixel_model = PixelSpaceModel(model, spec.preprocessing.mean, spec.preprocessing.std)
    with model_prepared(model):
        adversarial = pgd(pixel_model, images, labels, EPS, steps=10, generator=torch.Generator().manual_seed(0))
        return accuracy(pixel_model, images, labels), accuracy(pixel_model, adversarial, labels)


def test_adversarial_training_raises_robust_accuracy(tmp_path, shared_datasets):
    data = f"mnist:{shared_datasets / 'mnist'},limit=2400"
    common = {"data": data, "model": TINY_MODEL, "model_kwargs": dict(TINY_MODEL_KWARGS), **TRAINING}
    normal_run = train(TrainConfig(**common), tmp_path / "normal")
    robust_run = train(TrainConfig(**common, adv="fgsm", adv_eps=EPS, adv_val_images=100), tmp_path / "adv")
    normal_clean, normal_robust = pgd_accuracy(normal_run.run.path, data)
    robust_clean, robust_robust = pgd_accuracy(robust_run.run.path, data)
    print(f"normal {normal_clean:.3f}/{normal_robust:.3f}, adversarial {robust_clean:.3f}/{robust_robust:.3f}")
    # measured on a Zen 2 (AVX2), 300 test images, chance 0.10: normal 0.94 clean / 0.00-0.007 under PGD-10;
    # adversarial 0.93 / 0.74-0.82 (seeds 0 and 1, and with the kernels held to SSE4.1)
    assert normal_clean > 0.8 and normal_robust < 0.1
    assert robust_clean > 0.8 and robust_robust > 0.5 and robust_robust > normal_robust + 0.4
    epochs = robust_run.run.metrics("epoch")
    assert all("val_robust_acc" in r and "val_acc" in r for r in epochs)
    assert robust_run.run.info["config"]["adv"] == "fgsm"
