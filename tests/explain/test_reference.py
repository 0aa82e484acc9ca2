"""Agreement with pytorch-grad-cam, the reference implementation, and with an independent SVD."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from convforge.explain import Explainer, explain, normalize_maps, principal_projection
from convforge.explain.cam import upsample_maps

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import (  # noqa: E402
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.xdist_group("reference")  # its module fixtures are built once, on one worker

REFERENCE = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


@pytest.fixture(scope="module", params=["resnet18", "convnext_atto"])
def model_and_images(request):
    torch.manual_seed(0)
    model = timm.create_model(request.param, num_classes=10).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, images


@pytest.mark.parametrize("method", list(REFERENCE))
def test_every_shared_method_agrees_with_pytorch_grad_cam(model_and_images, method):
    model, images = model_and_images
    ours = explain(model, images, method, targets=[1, 4, 7])
    layer = dict(model.named_modules())[ours.layer]
    with REFERENCE[method](model, [layer]) as cam:
        cam.batch_size = 64  # Score-CAM's chunk size in pytorch-grad-cam (the maps do not depend on it)
        reference = cam(images, [ClassifierOutputTarget(c) for c in (1, 4, 7)])
    maps = ours.maps.numpy()
    assert maps.shape == reference.shape == (3, 64, 64)
    if method == "eigencam":
        # The principal direction's sign is arbitrary; pytorch-grad-cam keeps LAPACK's. Ours must
        # equal its map or the map of the opposite sign, image by image.
        flipped = normalize_maps(upsample_maps((-ours.cams).clamp(min=0), (64, 64))).numpy()
        error = np.minimum(np.abs(maps - reference).max((1, 2)), np.abs(flipped - reference).max((1, 2)))
        assert error.max() < 1e-4
    else:
        assert np.abs(maps - reference).max() < 1e-4
    assert maps.min() == 0.0 and maps.max() <= 1.0


def test_eigencam_is_the_first_principal_direction_from_an_svd(model_and_images):
    model, images = model_and_images
    result = explain(model, images, "eigencam")
    activations = {}
    layer = dict(model.named_modules())[result.layer]
    handle = layer.register_forward_hook(lambda m, a, out: activations.setdefault("a", out.detach()))
    with torch.no_grad():
        model(images)
    handle.remove()
    a = activations["a"].double()
    for i in range(len(images)):
        m = a[i].flatten(1).T  # positions x channels
        m = m - m.mean(0)
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        expected = (m @ vh[0]).view(a.shape[2:])
        got = result.cams[i].double()
        sign = torch.sign((got * expected).sum())
        torch.testing.assert_close(got, sign * expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_eigencam_needs_no_backward_pass():
    model = timm.create_model("resnet18", num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    explainer = Explainer(model)
    explainer.target_layer(images)  # finding the layer takes one backward pass on one image, once
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        explainer(images, "eigencam")
    assert saved == []  # nothing recorded for a backward pass


def test_principal_projection_picks_the_sign_that_follows_the_activations():
    # One channel lights up a 2x2 block: the projection is largest there whatever LAPACK's sign.
    activations = torch.zeros(1, 3, 4, 4)
    activations[0, 0, :2, :2] = 5.0
    activations[0, 1] = torch.rand(4, 4) * 0.01
    projection = principal_projection(activations)[0]
    assert projection[:2, :2].min() > projection[2:, 2:].max()


def test_gradient_methods_stop_the_backward_pass_at_the_target_layer():
    model = timm.create_model("resnet18", num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    explainer = Explainer(model)
    assert explainer.target_layer(images).name == "layer4"
    reached = []
    model.layer3.register_full_backward_hook(lambda *args: reached.append("layer3"))
    explainer(images, "gradcam")
    assert reached == []
    assert all(p.requires_grad for p in model.parameters()), "parameter flags must come back"
