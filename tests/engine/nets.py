"""Tiny models and state snapshots shared by the engine tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU (``features``) -> global average pool -> ``fc``.

    With a GAP + linear head, Grad-CAM at ``features`` is the classic CAM (Zhou et al. 2016).
    """

    def __init__(self, num_classes: int = 5, channels: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class DeepHeadNet(nn.Module):
    """A net whose explained layer (``stem``) has a non-trivial head after it (conv, BN,
    in-place ReLU, dropout), so a wrong batched gradient would show; also holds every kind
    of state a CAM pass must leave alone (BN statistics, dropout RNG)."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 12, 3, stride=2, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.Conv2d(12, 16, 3, padding=1),
        )
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.block(self.stem(x)), inplace=True)
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def tiny_images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


def seeded(model_cls, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return model_cls(**kwargs)


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


def modules_with_hooks(model: nn.Module) -> list[str]:
    """Names of submodules holding any forward/backward hook (an empty list is clean)."""
    return [
        f"{name or '<root>'}.{attr}"
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if getattr(module, attr, None)
    ]


def global_hooks() -> int:
    from torch.nn.modules import module as module_mod

    return sum(
        len(getattr(module_mod, attr, {}))
        for attr in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )


def snapshot(model: nn.Module) -> dict:
    """Everything a CAM pass must leave as it found it."""
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad": {
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "rng": torch.get_rng_state(),
        "grad_mode": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, grad in before["grad"].items():
        if grad is None:
            assert after["grad"][name] is None, f"{name}.grad was None and was written"
        else:
            assert torch.equal(after["grad"][name], grad), f"{name}.grad changed"
    for key in ("params", "buffers"):
        for name, value in before[key].items():
            assert torch.equal(after[key][name], value), f"{key[:-1]} {name} changed"
    assert torch.equal(after["rng"], before["rng"]), "the CPU RNG state changed"
    assert after["grad_mode"] == before["grad_mode"]
    assert after["inference_mode"] == before["inference_mode"]


def train_on_shapes(model: nn.Module, steps: int, batch: int, size: int) -> nn.Module:
    """Train ``model`` for ``steps`` Adam steps (one-cycle schedule) on generated shapes of
    ``size`` pixels (seeded data; the batch order from torch's global stream, which the
    caller seeds before building the model). Returns it in eval mode."""
    from lightning_gradcam.synthetic import make_shapes

    train = make_shapes(steps * batch, size=size, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=5e-3, total_steps=steps)
    order = torch.randperm(len(train))
    for step in range(steps):
        index = order[step * batch : (step + 1) * batch]
        loss = F.cross_entropy(model(train.images[index]), train.labels[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()
