"""Small MRL models for tests (`factories:NAME` as an export SOURCE; tests/ is on sys.path)."""

import torch
from torch import nn

NESTING = [4, 8, 16, 32]


class TinyMRL(nn.Module):
    """An MLP encoder with one head per nesting dim: forward returns (z, [logits per dim])."""

    def __init__(self, in_dim=20, full_dim=32, classes=5, with_heads=True):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, full_dim))
        self.heads = nn.ModuleList(nn.Linear(m, classes) for m in NESTING) if with_heads else None

    def forward(self, x):
        z = self.encoder(x.flatten(1))
        if self.heads is None:
            return z
        return z, [head(z[:, :m]) for m, head in zip(NESTING, self.heads)]


def tiny_mrl():
    return TinyMRL()


def tiny_embedder():
    return TinyMRL(with_heads=False)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16)
    )


def not_a_module():
    return 42
