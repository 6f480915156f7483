"""The networks `mrl-deploy train` builds: an encoder giving z (batch x full_dim) and MRL heads.

Encoders (architecture names as stored in mrl_model.json):
  cnn       image-shaped x (N x C x H x W, N x H x W or N x H x W x C, read from the data): stages
            of 3x3 convs, a 2x max-pool between stages, the last stage's width repeated at every
            further halving until the feature map is at most 4 x 4, then a linear layer to z. The
            input shape is fixed, so no adaptive pooling is needed (exports cleanly). The default
            [[32], [64]] pools right after the first conv: 6.0 M multiply-adds per 28 x 28 sample
            (0.38 M per 8 x 8 digit) where the former [[32, 64]], two convs at full resolution,
            cost 24 M (1.85 M), at the same digits accuracy within noise (benchmarks/README.md,
            training).
  mlp       flat x (or any other shape, flattened): two hidden ReLU layers, then a linear layer to z.
  adapter   a linear d -> d map on top of a frozen sentence-transformers encoder's embedding,
            initialised to the identity (so training starts from the plain encoder).
cnn and mlp standardise their raw input inside the network (a stored mean and std), so the
exported graph takes x exactly as the data holds it (uint8 pixels, unscaled features).

Heads: MRL has one Linear(m, classes) per nesting dim m, fed z[:m]; MRL-E (`efficient`) has one
Linear(full_dim, classes) whose first m columns score z[:m] (logits = z[:m] @ W[:, :m].T + b).
`MRLNet.forward(x)` returns (z, [logits per nesting dim]) for MRL and z alone for MRL-E (whose
shared head the exporter slices itself), the SourceModel contract of mrl_deploy.sources.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import image_layout

ARCHITECTURES = ("cnn", "mlp", "adapter")


class InputNorm(nn.Module):
    """(x - mean) / std with scalars fitted on the training data; casts integer pixels to float."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x):
        return (x.float() - self.mean) / self.std


CNN_STAGES = [[32], [64]]
# What checkpoints written before the stages were recorded hold: two convs at full resolution.
LEGACY_CNN_STAGES = [[32, 64]]


class SmallCNN(nn.Module):
    def __init__(self, input_shape: Sequence[int], full_dim: int, stages: Sequence[Sequence[int]] = CNN_STAGES,
                 dropout: float = 0.1, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.layout = image_layout(input_shape)
        if self.layout is None:
            raise ValueError(f"input shape {list(input_shape)} is not image-shaped")
        shape = list(input_shape)
        if self.layout == "chw":
            in_channels, height, width = shape
        elif self.layout == "hw":
            in_channels, height, width = 1, *shape
        else:
            height, width, in_channels = shape
        self.norm = InputNorm(mean, std)
        layers: list[nn.Module] = []
        previous = in_channels
        for index, widths in enumerate(stages):
            if index:
                if height <= 4 and width <= 4:
                    break                  # small inputs: no further halving, fewer stages
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            for out in widths:
                layers += [nn.Conv2d(previous, out, 3, padding=1), nn.ReLU()]
                previous = out
        while height > 4 or width > 4:  # halve until the map is small; the flatten size stays fixed
            layers += [nn.MaxPool2d(2), nn.Conv2d(previous, previous, 3, padding=1), nn.ReLU()]
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(previous * height * width, full_dim)

    def forward(self, x):
        x = self.norm(x)
        if self.layout == "hw":
            x = x.unsqueeze(1)
        elif self.layout == "hwc":
            x = x.permute(0, 3, 1, 2)
        return self.project(self.dropout(self.features(x).flatten(1)))


class MLP(nn.Module):
    def __init__(self, input_shape: Sequence[int], full_dim: int, hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.1, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        features = 1
        for size in input_shape:
            features *= int(size)
        self.norm = InputNorm(mean, std)
        layers: list[nn.Module] = []
        previous = features
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.ReLU(), nn.Dropout(dropout)]
            previous = width
        layers.append(nn.Linear(previous, full_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.norm(x).flatten(1))


class Adapter(nn.Module):
    """z = A e + b on a frozen encoder's embedding e; starts as the identity."""

    def __init__(self, input_shape: Sequence[int], full_dim: int):
        super().__init__()
        dim = int(input_shape[-1])
        self.linear = nn.Linear(dim, full_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(full_dim, dim))
            self.linear.bias.zero_()

    def forward(self, e):
        return self.linear(e)


class MRLHeads(nn.Module):
    """Logits at every nesting dim: separate Linear(m, C) per m (MRL) or one shared, sliced head (MRL-E)."""

    def __init__(self, full_dim: int, nesting_dims: Sequence[int], num_classes: int, efficient: bool = False):
        super().__init__()
        self.nesting_dims = [int(m) for m in nesting_dims]
        self.efficient = efficient
        if efficient:
            self.shared = nn.Linear(full_dim, num_classes)
            self.heads = None
        else:
            self.shared = None
            self.heads = nn.ModuleList(nn.Linear(m, num_classes) for m in self.nesting_dims)

    def forward(self, z) -> list:
        if self.shared is not None:
            return [F.linear(z[:, :m], self.shared.weight[:, :m], self.shared.bias) for m in self.nesting_dims]
        return [head(z[:, :m]) for m, head in zip(self.nesting_dims, self.heads)]


class MRLNet(nn.Module):
    def __init__(self, encoder: nn.Module, full_dim: int, nesting_dims: Sequence[int], num_classes: int,
                 efficient: bool = False):
        super().__init__()
        self.encoder = encoder
        self.full_dim = int(full_dim)
        self.nesting_dims = [int(m) for m in nesting_dims]
        self.efficient = efficient
        self.heads = MRLHeads(full_dim, nesting_dims, num_classes, efficient)

    def embed(self, x):
        return self.encoder(x)

    def all_logits(self, z) -> list:
        """Logits at every nesting dim (MRL and MRL-E alike): what the loss uses."""
        return self.heads(z)

    def forward(self, x):
        z = self.encoder(x)
        if self.efficient:
            return z
        return z, self.heads(z)


class TextPipeline(nn.Module):
    """The exported text model: tokens -> frozen sentence-transformers pipeline -> adapter (+ heads)."""

    def __init__(self, encoder: nn.Module, net: MRLNet):
        super().__init__()
        self.encoder = encoder
        self.net = net

    def forward(self, input_ids, attention_mask):
        return self.net(self.encoder(input_ids, attention_mask))


def build_encoder(name: str, input_shape: Sequence[int], full_dim: int, **hyperparameters: Any) -> nn.Module:
    if name == "cnn":
        return SmallCNN(input_shape, full_dim, **hyperparameters)
    if name == "mlp":
        return MLP(input_shape, full_dim, **hyperparameters)
    if name == "adapter":
        return Adapter(input_shape, full_dim, **hyperparameters)
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")


def build_net(architecture: dict[str, Any], input_shape: Sequence[int], full_dim: int, nesting_dims: Sequence[int],
              num_classes: int, efficient: bool = False) -> MRLNet:
    """Rebuild a network from mrl_model.json's architecture entry {name, hyperparameters}."""
    hyperparameters = dict(architecture.get("hyperparameters", {}))
    if architecture["name"] == "cnn":
        hyperparameters.setdefault("stages", LEGACY_CNN_STAGES)
    encoder = build_encoder(architecture["name"], input_shape, full_dim, **hyperparameters)
    return MRLNet(encoder, full_dim, nesting_dims, num_classes, efficient)
