"""Class activation maps, batched on the model's device, for any timm or convforge classifier.

    from convforge.explain import explain
    result = explain(model, images, method="gradcam")      # images: the model's (B, C, H, W) input
    result.maps      # (B, H, W) float in [0, 1], at input resolution
    result.logits    # (B, classes), from the same forward pass

Methods: Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018), XGrad-CAM (Fu et
al. 2020), HiResCAM (Draelos & Carin 2020), LayerCAM (Jiang et al. 2021), Eigen-CAM (Bany Muhammad
& Yeasin 2020), Score-CAM (Wang et al. 2020) and RISE (Petsiuk et al. 2018).

Why not pytorch-grad-cam itself: it copies activations and gradients to NumPy, runs the SVD per image,
loops Score-CAM's masked passes 16 at a time with a `.item()` per image, and back-propagates through
the whole network into every weight. Here everything stays on the device as torch ops over the
batch, and the backward pass stops at the target layer: the parameters are frozen for the call and
the layer's output is cut from the graph before it, so only the layers after it are differentiated.
tests/explain/test_reference.py shows agreement with pytorch-grad-cam within 1e-4 for every method the
two have in common; benchmarks/explain_speed.py measures the difference in speed.

Definitions follow pytorch-grad-cam (its Grad-CAM++ uses the closed form of the paper's eq. 19 with
the exponential-score assumption; its Score-CAM weights the channels by a softmax over the target
logits of the masked images rather than the paper's baseline-subtracted probabilities) with two
deliberate differences:
- Eigen-CAM's sign. The first principal direction is defined only up to sign, and pytorch-grad-cam
  keeps whichever sign LAPACK returns, so its map can come out inverted (highlighting the
  background) depending on the platform. Here the sign is chosen so that the projection correlates
  positively with the total activation; it equals pytorch-grad-cam's map or that of the opposite sign.
- The final map is normalised once, after resizing to the input; pytorch-grad-cam normalises before
  and after resizing. Bilinear resizing commutes with an affine rescale, so the maps are the same up
  to its 1e-7 epsilon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from convforge.errors import ConfigError, did_you_mean
from convforge.explain.layers import TargetLayer, find_target_layer
from convforge.explain.memory import chunk_size, memory_budget
from convforge.models.prepared import model_prepared

Targets = int | Sequence[int] | torch.Tensor | None


# --------------------------------------------------------------------- channel weightings
def _gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)


def _gradcam_plus_plus(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (g.clamp(min=0) * alpha).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1)


def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weights = (g * a / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1)


def _hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).sum(1)


def _layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.clamp(min=0) * a).sum(1)


GRADIENT_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcam_plus_plus,
    "xgradcam": _xgradcam,
    "hirescam": _hirescam,
    "layercam": _layercam,
}
METHODS = (*GRADIENT_METHODS, "eigencam", "scorecam", "rise")
LAYER_FREE_METHODS = ("rise",)


def principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM before rectification: each position's centred activation vector projected on the
    first principal direction of its image, (B, C, h, w) -> (B, h, w), signed so that it correlates
    positively with the summed activation.

    The SVD of the (positions x channels) matrix M is read off the smaller Gram matrix (M M^T or
    M^T M) with a batched symmetric eigensolver in float64: the same direction, much cheaper than
    a full SVD when one side is long (49 positions x 2048 channels for a ResNet-50)."""
    batch, channels, height, width = activations.shape
    m = activations.reshape(batch, channels, height * width).transpose(1, 2).double()
    m = m - m.mean(dim=1, keepdim=True)
    if height * width <= channels:
        values, vectors = torch.linalg.eigh(m @ m.transpose(1, 2))
        projection = vectors[..., -1] * values[..., -1].clamp(min=0).sqrt().unsqueeze(-1)
    else:
        _, vectors = torch.linalg.eigh(m.transpose(1, 2) @ m)
        projection = (m @ vectors[..., -1:]).squeeze(-1)
    total = activations.sum(1).reshape(batch, -1).double()
    agreement = (projection * (total - total.mean(dim=1, keepdim=True))).sum(1)
    projection = projection * torch.where(agreement < 0, -1.0, 1.0).unsqueeze(-1)
    return projection.reshape(batch, height, width).to(activations.dtype)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map shifted and scaled to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    shifted = maps - low
    return shifted / (1e-7 + shifted.flatten(1).max(dim=1).values.view(-1, 1, 1))


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear with half-pixel centres (OpenCV's INTER_LINEAR)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


@dataclass
class Explanation:
    """Maps for one batch. `cams` is the map before resizing and normalisation, at the target layer's
    resolution (before rectification for Eigen-CAM; None for RISE, which has no layer)."""

    method: str
    layer: str | None
    maps: torch.Tensor  # (B, H, W) in [0, 1]
    logits: torch.Tensor  # (B, classes)
    targets: torch.Tensor  # (B,) the class each map explains
    cams: torch.Tensor | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- the explainer
class Explainer:
    """Explains one model; finds its target layer once per input size.

        with Explainer(model) as explainer:
            gradcam = explainer(images, "gradcam")
            eigencam = explainer(images, "eigencam", targets=3)

    Nothing stays attached to the model between calls: each call registers its one hook, switches
    the model to eval mode and freezes its parameters, and undoes all three before returning, also
    when it raises. `max_memory` bounds the bytes one forward pass may use (default: half of the
    free memory); batches, Score-CAM's masked copies and RISE's masks are chunked to fit it.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        *,
        max_memory: int | None = None,
        rise_masks: int = 2000,
        rise_cells: int = 7,
        rise_keep: float = 0.5,
        seed: int = 0,
    ):
        self.model = model
        self.layer_name = layer
        self.max_memory = max_memory
        self.rise_masks, self.rise_cells, self.rise_keep, self.seed = rise_masks, rise_cells, rise_keep, seed
        self._layers: dict[tuple[int, ...], TargetLayer] = {}

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self._layers.clear()

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def target_layer(self, images: torch.Tensor) -> TargetLayer:
        key = tuple(images.shape[1:])
        if key not in self._layers:
            with model_prepared(self.model):
                self._layers[key] = find_target_layer(self.model, images[:1], self.layer_name)
        return self._layers[key]

    def __call__(self, images: torch.Tensor, method: str = "gradcam", targets: Targets = None) -> Explanation:
        method = check_method(method)
        images = _check_images(images).to(self.device)
        budget = memory_budget(self.device, self.max_memory)
        layer = None if method in LAYER_FREE_METHODS else self.target_layer(images)
        with model_prepared(self.model):
            if method == "rise":
                return self._rise(images, targets, budget)
            per_image = _image_bytes(images) + 3 * (layer.bytes_peak if layer else 0)
            if method in GRADIENT_METHODS:
                per_image += layer.bytes_after
            step = chunk_size(per_image, budget, len(images), "image")
            parts = [
                self._explain_chunk(
                    images[i : i + step], method, _slice_targets(targets, i, step), layer, budget
                )
                for i in range(0, len(images), step)
            ]
        return Explanation(
            method=method,
            layer=layer.name,
            maps=torch.cat([p.maps for p in parts]),
            logits=torch.cat([p.logits for p in parts]),
            targets=torch.cat([p.targets for p in parts]),
            cams=torch.cat([p.cams for p in parts]),
        )

    # ------------------------------------------------------------------------- methods
    def _explain_chunk(
        self, images: torch.Tensor, method: str, targets: Targets, layer: TargetLayer, budget: int
    ) -> Explanation:
        size = (images.shape[-2], images.shape[-1])
        gradients = method in GRADIENT_METHODS
        with capture(layer, gradients) as captured, torch.set_grad_enabled(gradients):
            logits = _logits(self.model, images)
        chosen = resolve_targets(targets, logits)
        activations = layer.to_nchw(captured.output, size)
        if gradients:
            score = logits.gather(1, chosen.unsqueeze(1)).sum()
            (grad,) = torch.autograd.grad(score, captured.output, allow_unused=True)
            if grad is None:  # a layer the logits do not depend on (only possible when named)
                grad = torch.zeros_like(captured.output)
            with torch.no_grad():
                cams = GRADIENT_METHODS[method](
                    activations.detach().float(), layer.to_nchw(grad, size).float()
                )
            rectified = cams.clamp(min=0)
        elif method == "eigencam":
            cams = principal_projection(activations.float())
            rectified = cams.clamp(min=0)
        else:  # scorecam
            with torch.no_grad():
                cams = self._scorecam(images, activations.float(), chosen, layer, budget)
            rectified = cams.clamp(min=0)
        maps = normalize_maps(upsample_maps(rectified, size))
        return Explanation(method, layer.name, maps, logits.detach().float(), chosen, cams.detach())

    def _scorecam(
        self, images: torch.Tensor, activations: torch.Tensor, targets: torch.Tensor, layer, budget: int
    ) -> torch.Tensor:
        """Each channel, upsampled and scaled to [0, 1], masks the image; the channel's weight is the
        softmax over channels of the target logits of the masked images. A constant channel masks the
        image to all zeros: those share one forward pass instead of one each."""
        batch, channels = activations.shape[:2]
        size = (images.shape[-2], images.shape[-1])
        flat = activations.flatten(2)
        low, high = flat.min(dim=2).values, flat.max(dim=2).values
        constant = high == low
        scores = torch.empty(batch, channels, device=images.device)
        zeros_logits = _logits(self.model, torch.zeros_like(images[:1])).float()[0]
        scores[constant] = zeros_logits[targets.unsqueeze(1).expand(-1, channels)[constant]]
        pairs = (~constant).nonzero()  # (image, channel) rows that need their own pass
        step = chunk_size(_image_bytes(images[:1]) * 2 + 3 * layer.bytes_peak, budget, 256, "masked image")
        for start in range(0, len(pairs), step):
            image_index, channel_index = pairs[start : start + step].unbind(1)
            masks = F.interpolate(
                activations[image_index, channel_index].unsqueeze(1),
                size=size,
                mode="bilinear",
                align_corners=True,
            )
            masks = (masks - low[image_index, channel_index].view(-1, 1, 1, 1)) / (
                high[image_index, channel_index] - low[image_index, channel_index] + 1e-8
            ).view(-1, 1, 1, 1)
            logits = _logits(self.model, images[image_index] * masks).float()
            scores[image_index, channel_index] = logits.gather(1, targets[image_index].unsqueeze(1)).squeeze(
                1
            )
        weights = scores.softmax(dim=1)
        return (weights[:, :, None, None] * activations).sum(1)

    def _rise(self, images: torch.Tensor, targets: Targets, budget: int) -> Explanation:
        """RISE (Petsiuk et al. 2018): the saliency of a pixel is the mean target probability of
        random masked copies of the image, weighted by how much each mask keeps that pixel. Masks are
        shared by the batch and drawn chunk by chunk on the device from a seeded generator."""
        batch, _, height, width = images.shape
        with torch.no_grad():
            logits = _logits(self.model, images).float()
            chosen = resolve_targets(targets, logits)
            generator = torch.Generator(device=images.device).manual_seed(self.seed)
            saliency = torch.zeros(batch, height, width, device=images.device)
            per_copy = _image_bytes(images[:1]) * 4 + 2 * _image_bytes(images[:1]) // images.shape[1]
            step = max(1, chunk_size(per_copy, budget, 4096, "masked image") // batch)
            for start in range(0, self.rise_masks, step):
                masks = rise_masks(
                    min(step, self.rise_masks - start),
                    (height, width),
                    self.rise_cells,
                    self.rise_keep,
                    generator,
                )
                masked = (images.unsqueeze(1) * masks.unsqueeze(0).unsqueeze(2)).flatten(0, 1)
                probabilities = _logits(self.model, masked).float().softmax(dim=1)
                probabilities = probabilities.view(batch, len(masks), -1)
                target_probability = probabilities.gather(
                    2, chosen.view(batch, 1, 1).expand(-1, len(masks), 1)
                ).squeeze(2)
                saliency += torch.einsum("bm,mhw->bhw", target_probability, masks)
            saliency /= self.rise_masks * self.rise_keep
        return Explanation("rise", None, normalize_maps(saliency), logits, chosen, None)


def rise_masks(
    count: int, size: tuple[int, int], cells: int, keep: float, generator: torch.Generator
) -> torch.Tensor:
    """`count` RISE masks (count, H, W): a random cells x cells grid keeping each cell with
    probability `keep`, upsampled bilinearly to (cells + 1) cell sizes and cropped at a random shift
    below one cell, so the soft edges fall anywhere."""
    height, width = size
    device = generator.device
    cell_h, cell_w = -(-height // cells), -(-width // cells)
    grid = (torch.rand(count, 1, cells, cells, generator=generator, device=device) < keep).float()
    up = F.interpolate(
        grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear", align_corners=False
    )
    shift_y = torch.randint(0, cell_h, (count,), generator=generator, device=device)
    shift_x = torch.randint(0, cell_w, (count,), generator=generator, device=device)
    rows = (shift_y.unsqueeze(1) + torch.arange(height, device=device)).unsqueeze(2)
    cols = (shift_x.unsqueeze(1) + torch.arange(width, device=device)).unsqueeze(1)
    return up[torch.arange(count, device=device).view(-1, 1, 1), 0, rows, cols]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    layer: str | None = None,
    **options,
) -> Explanation:
    """One call: `Explainer(model, layer, **options)(images, method, targets)`."""
    return Explainer(model, layer, **options)(images, method, targets)


# ------------------------------------------------------------------------------ helpers
class _Captured:
    output: torch.Tensor


@contextlib.contextmanager
def capture(layer: TargetLayer, gradients: bool) -> Iterator[_Captured]:
    """Holds the target layer's output of the next forward pass. With `gradients`, the output is
    cut from the graph before it and made a leaf that requires grad: the backward pass then covers
    only the layers after it. The layer passes a copy on, so in-place ops downstream are allowed."""
    captured, calls = _Captured(), []

    def hook(module: nn.Module, args, output):
        calls.append(None)
        if layer.call >= 0 and len(calls) - 1 != layer.call:
            return None
        if not gradients:
            captured.output = output.detach()
            return None
        leaf = output.detach().requires_grad_(True)
        captured.output = leaf
        return leaf.clone()

    handle = layer.module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def check_method(method: str) -> str:
    name = method.strip().lower().replace("_", "").replace("-", "")
    aliases = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}
    name = aliases.get(name, name)
    if name not in METHODS:
        raise ConfigError(
            f"unknown explanation method {method!r}; known: {', '.join(METHODS)}.{did_you_mean(method, METHODS)}"
        )
    return name


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """The class per image: the prediction (None), one class for all (int) or one per image."""
    batch, classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    if isinstance(targets, int):
        chosen = torch.full((batch,), targets, dtype=torch.long, device=logits.device)
    else:
        chosen = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
        if len(chosen) != batch:
            raise ConfigError(
                f"{len(chosen)} target classes for {batch} images; give one per image, or one int"
            )
    bad = chosen[(chosen < 0) | (chosen >= classes)]
    if len(bad):
        raise ConfigError(
            f"target class {int(bad[0])} is outside the model's {classes} classes (0 to {classes - 1})"
        )
    return chosen


def _slice_targets(targets: Targets, start: int, step: int) -> Targets:
    if targets is None or isinstance(targets, int):
        return targets
    return torch.as_tensor(targets).reshape(-1)[start : start + step]


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ConfigError(
            "images must be a float tensor of model input (B, C, H, W), normalised as the model expects"
        )
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    return images.detach()


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    # Channels-last input (the model itself is left as it is) is the layout oneDNN's CPU convolutions
    # prefer and what convforge trains in; the maps agree with NCHW input to float32 rounding.
    logits = model(images.contiguous(memory_format=torch.channels_last))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != images.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"the model's output must be (batch, classes) logits to explain it; it is {shape}")
    return logits


def _image_bytes(images: torch.Tensor) -> int:
    return images[0].numel() * images.element_size()
