"""Is the map true, not only pretty? Perturbation metrics of saliency maps, batched.

Every metric perturbs the image according to the map and asks the model again:

- **deletion** and **insertion** (Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling
  for Explanation of Black-box Models", BMVC 2018). The ``N = H*W`` pixels are ranked by
  decreasing map value (ties: raster order). At step ``k = 0..S`` the first
  ``n_k = floor(k*N/S)`` pixels are replaced by the baseline (deletion) or revealed on the
  baseline (insertion), in all channels::

      deletion_k  = x * (1 - M_k) + b * M_k          insertion_k = b * (1 - M_k) + x * M_k

  ``p_k`` is the target's probability on step image ``k``; the area under the curve is the
  trapezoid rule over the fraction axis ``k/S`` in [0, 1]::

      AUC = (1/S) * (p_0/2 + p_1 + ... + p_{S-1} + p_S/2)

  Low deletion AUC and high insertion AUC mean the map ranks the pixels the model uses
  first. ``p_0`` of deletion and ``p_S`` of insertion are the original image's probability;
  ``p_S`` of deletion and ``p_0`` of insertion are the baseline's.
- **Average Drop** and **Increase in Confidence** (Chattopadhay, Sarkar, Howlader and
  Balasubramanian, "Grad-CAM++", WACV 2018). With ``Y`` the target's probability on the
  image and ``O`` on the image multiplied by the map (``x * m``, the tensor as the model
  takes it, so masked pixels go to 0 in the model's input space)::

      average_drop = 100 * max(0, Y - O) / Y          increase_in_confidence = 100 * [O > Y]

  per image; their mean over images is the paper's number (lower drop, higher increase:
  better).

The probability is the softmax of the model's class scores unless a callable is given.

Cost: the step images of all images and all maps are stacked and run in chunks of at most
``max_batch`` images, one no-grad forward per chunk; the original image and the baseline are
shared by every map and run once. Nothing loops over images.

A flat map (max == min: no evidence, e.g. Grad-CAM with no positive gradient) ranks
nothing; its numbers are NaN, never a value that looks like a measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from .state import cam_mode, preserve_model_state
from .targets import logits_of

__all__ = [
    "METRICS",
    "SCALARS",
    "Faithfulness",
    "check_metrics",
    "blur_baseline",
    "random_maps",
    "evaluate_maps",
    "auc",
    "mean_scalars",
]

#: Metric names accepted everywhere (callback, engine, command line).
METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")
#: The scalar each metric yields (also the TensorBoard tag's last part).
SCALARS = {
    "deletion": "deletion_auc",
    "insertion": "insertion_auc",
    "average_drop": "average_drop",
    "increase_in_confidence": "increase_in_confidence",
}
#: Gaussian blur of the default baseline, as in RISE's evaluation code (11x11 kernel, sigma 5).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0

Baseline = str | float | torch.Tensor
Probability = Callable[[object], torch.Tensor]


def check_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """Validate metric names; return them as a tuple without duplicates, in order."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        names = tuple(dict.fromkeys(metrics))
    except TypeError:
        raise TypeError(
            f"faithfulness metrics must be a sequence of names, got {type(metrics).__name__}"
        ) from None
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown faithfulness metric(s) {unknown}; choose from {', '.join(METRICS)}"
        )
    return names


def blur_baseline(
    images: torch.Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA
) -> torch.Tensor:
    """The default baseline: ``images`` blurred by torchvision's ``gaussian_blur`` (reflect
    padding), an 11x11 kernel of sigma 5 by default as in RISE's code; the kernel is cut to
    the image size for small images."""
    side = min(images.shape[-2:])
    kernel = min(kernel_size, side if side % 2 else side - 1)
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def random_maps(
    batch: int, height: int, width: int, seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(batch, height, width)`` uniform noise in [0, 1) from a local generator seeded with
    ``seed``: the random-map reference, the same on every call and device, drawing nothing
    from the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, height, width, generator=generator).to(device)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under ``curves (..., S+1)`` sampled at fractions ``k/S`` of [0, 1]."""
    steps = curves.shape[-1] - 1
    inner = curves.sum(dim=-1) - 0.5 * (curves[..., 0] + curves[..., -1])
    return inner / steps


@dataclass
class Faithfulness:
    """What ``evaluate_maps`` measured for ``B`` images.

    Attributes:
        scores: map name -> scalar name (``deletion_auc``, ``insertion_auc``,
            ``average_drop``, ``increase_in_confidence``) -> ``(B,)`` float32; NaN for a
            flat map.
        curves: map name -> ``"deletion"`` / ``"insertion"`` -> ``(B, S+1)`` probabilities
            at fractions ``0, 1/S, ..., 1`` of the pixels removed / revealed.
        original: ``(B,)`` the target's probability on the unmodified images.
        baseline: ``(B,)`` the target's probability on the baseline images (NaN when no
            deletion/insertion was asked for).
    """

    scores: dict[str, dict[str, torch.Tensor]]
    curves: dict[str, dict[str, torch.Tensor]]
    original: torch.Tensor
    baseline: torch.Tensor


def _baseline_images(images: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(
                f"baseline {baseline!r} is not known; use 'blur', a number (a constant image "
                "in the model's input space, e.g. 0.0) or a tensor shaped like the images"
            )
        return blur_baseline(images)
    if isinstance(baseline, bool):
        raise TypeError("baseline must be 'blur', a number or a tensor, not a bool")
    if isinstance(baseline, (int, float)):
        return torch.full_like(images, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(images).expand_as(images)
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the images' "
                f"{tuple(images.shape)}"
            ) from None
    raise TypeError(f"baseline must be 'blur', a number or a tensor, got {type(baseline).__name__}")


def _target_probability(
    output: object, targets: torch.Tensor | None, probability: Probability | None
) -> torch.Tensor:
    """``(n,)`` probability of each row's target in a model output."""
    probs = probability(output) if probability is not None else logits_of(output).softmax(dim=1)
    probs = probs.float()
    if targets is None:  # the callable gives each row's target value itself
        if probs.dim() == 2 and probs.shape[1] == 1:
            probs = probs[:, 0]
        if probs.dim() != 1:
            raise ValueError(
                f"without class ids the probability callable must return one value per image, "
                f"shape (B,) or (B, 1); got {tuple(probs.shape)}"
            )
        return probs
    return probs.gather(1, targets[:, None].to(probs.device))[:, 0]


def _check_maps(maps: Mapping[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
    checked = {}
    for name, m in maps.items():
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(
                f"map {name!r} has shape {tuple(m.shape)}; expected one map per image at the "
                f"input size, {(images.shape[0], *images.shape[-2:])}"
            )
        checked[name] = m.detach().float().to(images.device)
    return checked


def evaluate_maps(
    model: nn.Module,
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    targets: torch.Tensor | None,
    metrics: str | Sequence[str] = ("deletion", "insertion"),
    steps: int = 16,
    baseline: Baseline = "blur",
    probability: Probability | None = None,
    max_batch: int = 64,
) -> Faithfulness:
    """Measure every map in ``maps`` ({name: ``(B, H, W)``}) on ``images (B, C, H, W)``.

    Args:
        targets: ``(B,)`` class ids whose probability is followed, or ``None`` when
            ``probability`` returns each image's target value directly.
        metrics: any of ``deletion``, ``insertion``, ``average_drop``,
            ``increase_in_confidence``.
        steps: ``S``, the number of equal parts of the pixels removed / revealed.
        baseline: what removed pixels become: ``"blur"`` (``blur_baseline``), a number (a
            constant image in the model's input space) or a tensor broadcastable to images.
        probability: callable mapping the model output to ``(B, num_classes)``
            probabilities (or ``(B,)`` when ``targets`` is None); default: softmax of the
            class scores.
        max_batch: most images per forward pass (at least one batch of B per forward).

    Runs under no-grad in eval mode on the model's device; the model's flags, RNG state and
    BatchNorm statistics are as they were afterwards.
    """
    metrics = check_metrics(metrics)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    dtype = param.dtype if param is not None and param.is_floating_point() else images.dtype
    with torch.inference_mode(False):  # an ordinary tensor, even from Lightning's validate
        x = images.detach().to(device=device, dtype=dtype).clone()
    maps = _check_maps(maps, x)
    if targets is not None:
        targets = torch.as_tensor(targets).reshape(-1).long().to(device)
        if targets.numel() != x.shape[0]:
            raise ValueError(f"targets has {targets.numel()} class ids for {x.shape[0]} images")
    batch, pixels = x.shape[0], x.shape[-2] * x.shape[-1]
    curve_metrics = [m for m in ("deletion", "insertion") if m in metrics]
    multiply = any(m in metrics for m in ("average_drop", "increase_in_confidence"))
    names = list(maps)
    flat = {n: maps[n].flatten(1).amax(1) <= maps[n].flatten(1).amin(1) for n in names}

    with preserve_model_state(model), cam_mode(), torch.no_grad():
        base = _baseline_images(x, baseline) if curve_metrics else None
        # Rank of every pixel by decreasing map value (0 = most salient), per map.
        ranks = {}
        for n in names:
            order = maps[n].flatten(1).argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(pixels, device=device).expand(batch, -1))
            ranks[n] = rank.view(batch, 1, *x.shape[-2:])
        counts = [k * pixels // steps for k in range(steps + 1)]

        # Every forward is a "job" of B images; jobs are built lazily, chunk by chunk.
        jobs: list[tuple[str, str, int]] = [("original", "", 0)]
        if curve_metrics:
            jobs.append(("baseline", "", 0))
            jobs += [(n, m, k) for n in names for m in curve_metrics for k in range(1, steps)]
        if multiply:
            jobs += [(n, "multiply", 0) for n in names]

        def job_images(job: tuple[str, str, int]) -> torch.Tensor:
            name, kind, k = job
            if name == "original":
                return x
            if name == "baseline":
                return base
            if kind == "multiply":
                return x * maps[name][:, None].to(x.dtype)
            shown = ranks[name] < counts[k]  # (B, 1, H, W): the first n_k pixels
            if kind == "deletion":
                return torch.where(shown, base, x)
            return torch.where(shown, x, base)

        per_forward = max(1, max_batch // batch)
        results: list[torch.Tensor] = []
        for start in range(0, len(jobs), per_forward):
            chunk = jobs[start : start + per_forward]
            stacked = torch.cat([job_images(job) for job in chunk])
            row_targets = None if targets is None else targets.repeat(len(chunk))
            results.append(_target_probability(model(stacked), row_targets, probability))
        probs = torch.cat(results).view(len(jobs), batch).cpu()

    lookup = {job: probs[i] for i, job in enumerate(jobs)}
    original = lookup[("original", "", 0)]
    base_prob = (
        lookup[("baseline", "", 0)] if curve_metrics else torch.full_like(original, torch.nan)
    )
    scores: dict[str, dict[str, torch.Tensor]] = {}
    curves: dict[str, dict[str, torch.Tensor]] = {}
    for n in names:
        scores[n], curves[n] = {}, {}
        nan = flat[n].cpu()
        for m in curve_metrics:
            inner = [lookup[(n, m, k)] for k in range(1, steps)]
            ends = (original, base_prob) if m == "deletion" else (base_prob, original)
            curve = torch.stack([ends[0], *inner, ends[1]], dim=1)
            curves[n][m] = curve
            scores[n][SCALARS[m]] = auc(curve).masked_fill(nan, torch.nan)
        if multiply:
            masked = lookup[(n, "multiply", 0)]
            drop = 100 * (original - masked).clamp(min=0) / original
            increase = 100 * (masked > original).float()
            if "average_drop" in metrics:
                scores[n]["average_drop"] = drop.masked_fill(nan, torch.nan)
            if "increase_in_confidence" in metrics:
                scores[n]["increase_in_confidence"] = increase.masked_fill(nan, torch.nan)
    return Faithfulness(scores=scores, curves=curves, original=original, baseline=base_prob)


def mean_scalars(result: Faithfulness) -> dict[str, dict[str, float]]:
    """``{map name: {scalar name: mean over the images}}``, flat maps (NaN) left out; a
    scalar with no finite value at all is left out too, never logged as a number."""
    means: dict[str, dict[str, float]] = {}
    for name, values in result.scores.items():
        means[name] = {}
        for scalar, per_image in values.items():
            finite = per_image[torch.isfinite(per_image)]
            if finite.numel():
                means[name][scalar] = float(finite.mean())
    return means
