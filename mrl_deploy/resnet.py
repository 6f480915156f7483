"""Official MRL ResNet-50 checkpoints (RAIVNLab/MRL) as SourceModels.

The checkpoints are torchvision ResNet-50 (v1.5: stride on the 3x3 conv) state dicts whose `fc`
is the MRL head:
  MRL     fc.nesting_classifier_{i}.weight/bias, i = 0..8, head i fed z[:, :dims[i]]
  MRL-E   fc.nesting_classifier_0 only, (classes, 2048): logits at m use its first m columns
  plain   fc.weight/bias (classes, r): the released MRL-E checkpoints (their SingleHeadNestedLinear
          is an nn.Linear, r = 2048) and the fixed-feature baselines (FixedFeatureLayer, which
          classifies z[:r]). Both are exported like MRL-E, one shared head sliced to m columns, with
          z cut to its first r dims; an FF model's prefixes were not trained to be used alone.
They may be wrapped ({'state_dict': ...} or {'model': ...}), carry a `module.` prefix
(DataParallel), and, when trained with FFCV, wrap strided convs in a BlurPoolConv2d
(`<conv>.conv.weight` + `<conv>.blur_filter`). Which convs are blurred is read from the keys.

torch is imported inside functions, so key detection works without it and a missing torch is a
MissingExtraError naming the export extra rather than an ImportError.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import SourceError

KIND = "resnet50-mrl"
FULL_DIM = 2048
NESTING_DIMS = [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))   # (width, blocks, stride of the first)
HEAD = "fc.nesting_classifier_"
WRAPPERS = ("state_dict", "model")
BN_KEYS = ("weight", "bias", "running_mean", "running_var")
BLUR_KERNEL = [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
SHOWN_KEYS = 3
# The torchvision / FFCV ImageNet pipeline the MRL models were trained and evaluated with.
PREPROCESSING = {
    "image": "RGB; resize the shorter side to 256, center-crop 224x224; pixels / 255 to [0, 1], then (x - mean) / std",
    "color": "RGB",
    "resize": 256,
    "center_crop": 224,
    "scale": [0.0, 1.0],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "layout": "NCHW",
    "dtype": "float32",
}


# --- key layout (pure Python: detection needs no torch) -----------------------------------------

def _conv_bn_pairs() -> Iterator[tuple[str, str]]:
    """(conv, batch norm) module names of a torchvision ResNet-50, in state-dict order."""
    yield "conv1", "bn1"
    for stage, (_, blocks, _) in enumerate(STAGES, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            for i in (1, 2, 3):
                yield f"{prefix}.conv{i}", f"{prefix}.bn{i}"
            if block == 0:  # every first block changes the channel count, so has a projection
                yield f"{prefix}.downsample.0", f"{prefix}.downsample.1"


def _strip_prefix(keys: Iterable[str]) -> list[str]:
    return [k[len("module."):] if k.startswith("module.") else k for k in keys]


def _missing_backbone(keys: set[str]) -> list[str]:
    """Backbone keys absent from `keys`; a conv counts as present plain or BlurPool-wrapped."""
    missing = []
    for conv, bn in _conv_bn_pairs():
        if f"{conv}.weight" not in keys and f"{conv}.conv.weight" not in keys:
            missing.append(f"{conv}.weight")
        missing += [f"{bn}.{name}" for name in BN_KEYS if f"{bn}.{name}" not in keys]
    return missing


def _head_kind(keys: set[str]) -> str | None:
    """'separate' (MRL), 'shared' (MRL-E), 'fc' (plain classifier) or None."""
    if f"{HEAD}1.weight" in keys:
        return "separate"
    if f"{HEAD}0.weight" in keys:
        return "shared"
    return "fc" if "fc.weight" in keys else None


def is_resnet_checkpoint(state_dict_keys: Iterable[str]) -> bool:
    """Whether the keys are those of an MRL ResNet-50 (any head variant, BlurPool or not, with or
    without the `module.` prefix)."""
    keys = set(_strip_prefix(state_dict_keys))
    return not _missing_backbone(keys) and _head_kind(keys) is not None


def blurpool_convs(state_dict_keys: Iterable[str]) -> list[str]:
    """The convs the checkpoint wraps in a BlurPoolConv2d (empty for a plain torchvision net)."""
    keys = set(_strip_prefix(state_dict_keys))
    return [conv for conv, _ in _conv_bn_pairs() if f"{conv}.conv.weight" in keys]


def _ffcv_blurred() -> list[str]:
    """The convs FFCV's apply_blurpool wraps: stride > 1 and in_channels >= 16 (so not the stem)."""
    return [f"layer{stage}.0.{conv}" for stage in (2, 3, 4) for conv in ("conv2", "downsample.0")]


# --- the network ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _classes():
    """(BlurPoolConv2d, Bottleneck, ResNet50MRL), built on first use so torch loads lazily."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BlurPoolConv2d(nn.Module):
        """FFCV's anti-aliasing: a fixed depthwise 3x3 blur (stride 1) before the strided conv."""

        def __init__(self, conv: nn.Conv2d):
            super().__init__()
            self.conv = conv
            kernel = torch.tensor(BLUR_KERNEL) / 16.0
            self.register_buffer("blur_filter", kernel.repeat(conv.in_channels, 1, 1, 1))

        def forward(self, x):
            blurred = F.conv2d(x, self.blur_filter, stride=1, padding=1, groups=self.conv.in_channels)
            return self.conv(blurred)

    def conv(name: str, blurred: frozenset, cin: int, cout: int, kernel: int, stride: int) -> nn.Module:
        layer = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        return BlurPoolConv2d(layer) if name in blurred else layer

    class Bottleneck(nn.Module):
        def __init__(self, name: str, cin: int, width: int, stride: int, blurred: frozenset):
            super().__init__()
            self.conv1, self.bn1 = conv(f"{name}.conv1", blurred, cin, width, 1, 1), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = conv(f"{name}.conv2", blurred, width, width, 3, stride), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = conv(f"{name}.conv3", blurred, width, width * 4, 1, 1), nn.BatchNorm2d(width * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != width * 4:
                self.downsample = nn.Sequential(conv(f"{name}.downsample.0", blurred, cin, width * 4, 1, stride),
                                                nn.BatchNorm2d(width * 4))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet50MRL(nn.Module):
        """torchvision ResNet-50 with the MRL `fc`. `head_dims` set: fc holds one Linear per nesting
        dim and forward returns (z, [logits per head]); otherwise fc is the shared head (or a
        plain Linear on z[:feature_dim] when `plain_fc`), left to the exporter, and forward returns z."""

        def __init__(self, num_classes: int, head_dims: list[int], head_bias: list[bool],
                     plain_fc: bool = False, blurred: Iterable[str] = (), feature_dim: int = FULL_DIM):
            super().__init__()
            blurred = frozenset(blurred)
            self.head_dims = list(head_dims)
            self.feature_dim = feature_dim
            self.conv1 = conv("conv1", blurred, 3, 64, 7, 2)
            self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            cin = 64
            for stage, (width, blocks, stride) in enumerate(STAGES, start=1):
                layer = []
                for block in range(blocks):
                    layer.append(Bottleneck(f"layer{stage}.{block}", cin, width, stride if block == 0 else 1, blurred))
                    cin = width * 4
                setattr(self, f"layer{stage}", nn.Sequential(*layer))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            if plain_fc:
                self.fc = nn.Linear(feature_dim, num_classes, bias=head_bias[0])
            else:
                self.fc = nn.Module()
                widths = self.head_dims or [FULL_DIM]
                for i, (width, bias) in enumerate(zip(widths, head_bias)):
                    setattr(self.fc, f"nesting_classifier_{i}", nn.Linear(width, num_classes, bias=bias))

        @property
        def shared_head(self):
            if self.head_dims:
                return None
            return self.fc if isinstance(self.fc, nn.Linear) else self.fc.nesting_classifier_0

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            z = torch.flatten(self.avgpool(x), 1)
            if self.feature_dim < FULL_DIM:  # a fixed-feature baseline only ever used z[:r]
                z = z[:, :self.feature_dim]
            if not self.head_dims:
                return z
            heads = [getattr(self.fc, f"nesting_classifier_{i}") for i in range(len(self.head_dims))]
            return z, [head(z[:, :m]) for m, head in zip(self.head_dims, heads)]

    return BlurPoolConv2d, Bottleneck, ResNet50MRL


def build_resnet50_mrl(num_classes: int = 1000, head_dims: list[int] | None = None, *, efficient: bool = False,
                       plain_fc: bool = False, feature_dim: int = FULL_DIM, head_bias: list[bool] | None = None,
                       blurred: Iterable[str] = ()):
    """A ResNet-50 MRL network (default init, eval mode). `head_dims` None: the paper's 9 heads,
    unless `efficient` (MRL-E) or `plain_fc` (fc.weight of `feature_dim` columns): one shared head."""
    shared = efficient or plain_fc
    dims = [] if shared else list(head_dims or NESTING_DIMS)
    bias = head_bias or [True] * max(len(dims), 1)
    network = _classes()[2](num_classes, dims, bias, plain_fc=plain_fc, blurred=blurred,
                            feature_dim=feature_dim if plain_fc else FULL_DIM)
    return network.eval()


# --- loading ---------------------------------------------------------------------------------------

def load_resnet_mrl(path: str | Path, nesting_dims: Any = None, **options: Any):
    """Load an official MRL ResNet-50 checkpoint as a SourceModel.

    MRL checkpoints give their nesting dims by their heads' widths. MRL-E checkpoints (one shared
    2048-column head) cannot, and get the paper's [8, 16, ..., 2048], which the released MRL-E
    models were trained at; a fixed-feature baseline (r < 2048 columns) was trained at r only and
    gets [r]. `nesting_dims` overrides both."""
    from .errors import require
    from .source_model import InputSpec, SourceModel, unexpected_options

    unexpected_options(KIND, options)
    require("torch", "export", "loading ResNet-50 checkpoints")
    path = str(path)
    state = _read_state_dict(path)
    model = _build_for(path, state)
    _load_weights(path, model, state)
    dims = _nesting_dims(path, model, nesting_dims)
    shared = model.shared_head
    return SourceModel(
        kind=KIND, path=path, module=model, full_dim=model.feature_dim, nesting_dims=dims,
        inputs=[InputSpec("x", "float32", ["batch", 3, 224, 224])],
        head_dims=list(model.head_dims), shared_head=shared,
        num_classes=int(shared.out_features if shared is not None else model.fc.nesting_classifier_0.out_features),
        preprocessing=dict(PREPROCESSING),
        # the file is the source; only a chosen nesting list must travel with it (torch runtime)
        options={"nesting_dims": dims} if nesting_dims is not None else {},
    )


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _load_error(exc: BaseException) -> str:
    """torch's weights_only refusal is a page that advises weights_only=False (running the file's
    code); keep only the cause it names, and say why the file is not run."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        cause = _one_line(text.split(marker, 1)[1]).split(" was not an allowed global")[0].rstrip(". ")
        return f"{cause} (read with torch.load(weights_only=True): tensors and plain containers only; or the file is corrupt)"
    return _one_line(exc) if text.strip() else f"{type(exc).__name__} (empty or truncated file?)"


def _read_state_dict(path: str) -> dict[str, Any]:
    """The checkpoint's state dict: unwrapped, `module.` stripped, refused unless all tensors."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for unreadable files (pickle, zip, EOF, ...)
        raise SourceError(f"cannot read checkpoint {path}: {_load_error(exc)}") from None
    for _ in range(2):  # e.g. {'state_dict': {...}, 'epoch': ...} as training loops save
        if isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in WRAPPERS):
            data = next(data[k] for k in WRAPPERS if isinstance(data.get(k), dict))
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not an MRL ResNet-50 checkpoint: it holds a {type(data).__name__}, not a state dict")
    if not data:
        raise SourceError(f"{path} is not an MRL ResNet-50 checkpoint: the state dict is empty")
    keys = [str(k) for k in data]
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise SourceError(f"{path} is not an MRL ResNet-50 checkpoint: non-tensor entries {_few(not_tensors)}")
    return dict(zip(_strip_prefix(keys), data.values()))


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _build_for(path: str, state: dict[str, Any]):
    """The network whose keys and shapes the checkpoint should have: head and BlurPool from its keys."""
    keys = set(state)
    missing = _missing_backbone(keys)
    head = _head_kind(keys)
    if missing or head is None:
        parts = [f"missing {_few(missing)}"] if missing else []
        if head is None:
            parts.append(f"no classifier ({HEAD}{{i}}.weight or fc.weight)")
        raise SourceError(f"{path} is not an MRL ResNet-50 checkpoint: {'; '.join(parts)}")
    if head == "fc":
        weights = [state["fc.weight"]]
        bias = ["fc.bias" in keys]
    else:
        count = len([k for k in keys if k.startswith(HEAD) and k.endswith(".weight")])
        names = [f"{HEAD}{i}" for i in range(count)]
        absent = [f"{n}.weight" for n in names if f"{n}.weight" not in keys]
        if absent:
            raise SourceError(f"{path}: MRL heads are not numbered 0..{count - 1}: missing {_few(absent)}")
        weights = [state[f"{n}.weight"] for n in names]
        bias = [f"{n}.bias" in keys for n in names]
    _check_heads(path, weights, head)
    widths = [int(w.shape[1]) for w in weights]
    return build_resnet50_mrl(int(weights[0].shape[0]), widths if head == "separate" else None,
                              efficient=head == "shared", plain_fc=head == "fc", feature_dim=widths[0],
                              head_bias=bias, blurred=blurpool_convs(keys))


def _check_heads(path: str, weights: list[Any], head: str) -> None:
    shapes = [tuple(w.shape) for w in weights]
    if any(len(s) != 2 for s in shapes):
        raise SourceError(f"{path}: classifier weights must be 2-D (classes, features), got {shapes[:SHOWN_KEYS]}")
    widths = [s[1] for s in shapes]
    if head == "shared" and widths[0] != FULL_DIM:
        raise SourceError(f"{path}: the MRL-E head {HEAD}0 takes {widths[0]} features; a ResNet-50 gives {FULL_DIM}")
    if len({s[0] for s in shapes}) > 1:
        raise SourceError(f"{path}: MRL heads disagree on the number of classes: {sorted({s[0] for s in shapes})}")
    if widths != sorted(set(widths)) or widths[-1] > FULL_DIM:
        raise SourceError(f"{path}: MRL head widths {widths} must increase and stay <= {FULL_DIM}")


def _load_weights(path: str, model, state: dict[str, Any]) -> None:
    """load_state_dict(strict=True) after filling the buffers some checkpoints leave out."""
    import torch

    expected = model.state_dict()
    state = dict(state)
    for key, value in expected.items():
        # older torch wrote no num_batches_tracked; eval-mode BN never reads it. A BlurPool conv
        # without its buffer gets FFCV's fixed filter, which is all that buffer ever holds.
        if key not in state and key.endswith(("num_batches_tracked", "blur_filter")):
            state[key] = value.clone()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise SourceError(f"{path} is not an MRL ResNet-50 checkpoint: unexpected keys {_few(unexpected)}")
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise SourceError(f"{path} is not an MRL ResNet-50 checkpoint: shape mismatch {_few(wrong)}")
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SourceError(f"{path}: cannot load the ResNet-50 weights: {_one_line(exc)}") from None
    model.eval()


def _nesting_dims(path: str, model, requested: Any) -> list[int]:
    from .dims import parse_dims

    if requested is None:
        if model.head_dims:
            return list(model.head_dims)
        # MRL-E: the paper's dims (known, not guessed); a fixed-feature model: its one trained dim
        return list(NESTING_DIMS) if model.feature_dim == FULL_DIM else [int(model.feature_dim)]
    dims = parse_dims(requested)
    if model.head_dims and dims != model.head_dims:
        raise SourceError(f"{path}: nesting dims {dims} differ from the checkpoint's heads {model.head_dims}")
    if not dims or dims[-1] > model.feature_dim:
        raise SourceError(f"{path}: nesting dims {dims} must be non-empty and at most {model.feature_dim}")
    return dims


# --- test / benchmark checkpoints -------------------------------------------------------------------

def make_random_checkpoint(path: str | Path, efficient: bool = False, blurpool: bool = False,
                           module_prefix: bool = False, num_classes: int = 1000, seed: int = 0) -> Path:
    """Write a seeded random-weight checkpoint in the official format (MRL, or MRL-E with
    `efficient`; FFCV BlurPool convs with `blurpool`; DataParallel `module.` keys with
    `module_prefix`). torch's default init with BN running mean 0 / var 1 keeps activations finite."""
    import torch

    torch.manual_seed(seed)
    model = build_resnet50_mrl(num_classes, efficient=efficient, blurred=_ffcv_blurred() if blurpool else ())
    state = model.state_dict()
    if module_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    from .manifest import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
