"""Factory sources: `package.module:factory`, a callable returning an nn.Module (torch imported
when one is loaded)."""

from __future__ import annotations

from typing import Any

from .errors import SourceError
from .source_model import InputSpec, SourceModel, unexpected_options


def looks_like_factory(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and bool(attr) and all(part.isidentifier() for part in module.split(".") + attr.split("."))


def load_factory(spec: str, nesting_dims: Any = None, input_shape: Any = None, input_dtype: str = "float32",
                 **options: Any) -> SourceModel:
    """`package.module:factory`: factory() returns an nn.Module whose forward(x) returns the full
    embedding, or (embedding, [logits per nesting dim])."""
    import importlib
    import os
    import sys

    import torch

    from .dims import check_nesting_dims

    unexpected_options("factory", options)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a factory in the user's working directory
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"cannot import factory {spec}: {exc}") from None
    if not callable(target):
        raise SourceError(f"{spec} is not callable")
    module = target()
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"{spec}() returned {type(module).__name__}, not a torch.nn.Module")
    module.eval()
    shape = _parse_shape(input_shape)
    spec_in = InputSpec("x", input_dtype, ["batch", *shape])
    probe = SourceModel("factory", spec, module, 0, [], [spec_in])
    feed = probe.random_inputs(batch=2)
    with torch.no_grad():
        out = module(torch.from_numpy(feed["x"]))
    z, logits = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise SourceError(f"{spec}: forward must return a (batch, dim) embedding, got {getattr(z, 'shape', type(z).__name__)}")
    full_dim = int(z.shape[1])
    dims = check_nesting_dims(nesting_dims, full_dim, spec)   # not given: unknown, never guessed
    head_dims: list[int] = []
    num_classes = None
    if logits is not None:
        if dims is None:
            raise SourceError(f"{spec}: forward returns logits, one per nesting dim: pass --nesting-dims "
                              "(the dims its heads read, e.g. 8,16,32)")
        if not isinstance(logits, (list, tuple)) or len(logits) != len(dims):
            raise SourceError(
                f"{spec}: forward returned {len(logits) if isinstance(logits, (list, tuple)) else 'non-list'} "
                f"logits; expected a list with one tensor per nesting dim {dims} (pass --nesting-dims)"
            )
        head_dims = dims
        num_classes = int(logits[0].shape[-1])
    return SourceModel(
        kind="factory", path=spec, module=module, full_dim=full_dim, nesting_dims=dims, inputs=[spec_in],
        head_dims=head_dims, num_classes=num_classes,
        options={"nesting_dims": dims, "input_shape": shape, "input_dtype": input_dtype},
    )


def _parse_shape(value: Any) -> list[int]:
    if value is None:
        raise SourceError("factory sources need --input-shape (one sample's shape without the batch, e.g. 3,224,224)")
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
    try:
        shape = [int(p) for p in parts if str(p).strip()]
    except ValueError:
        raise SourceError(f"--input-shape must be integers like 3,224,224, got {value!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise SourceError(f"--input-shape must be positive integers, got {value!r}")
    return shape
