"""The computation an artifact holds, as a torch module: a source model's full embedding z, then
for each chosen dim m the normalised prefix z[:m] (after the pre-truncation step), and the
heads' logits. The exporter traces it to ONNX and the torch runtime runs it as the reference, so
both read it from here (torch is imported only when the module is built)."""

from __future__ import annotations

from typing import Any, Sequence

from .source_model import SourceModel


def plan_outputs(source: SourceModel, dims: Sequence[int]) -> list[dict[str, Any]]:
    """The graph's outputs, in order: embedding_{m} for every dim, then logits_{m} where a head exists."""
    outputs = [{"name": f"embedding_{m}", "kind": "embedding", "dim": m} for m in dims]
    outputs += [
        {"name": f"logits_{m}", "kind": "logits", "dim": m, "classes": source.num_classes}
        for m in source.logit_dims(list(dims))
    ]
    return outputs


def _build_module_class():
    import torch
    import torch.nn.functional as F

    class MRLExportModule(torch.nn.Module):
        """Wraps a source model: z -> [pre-truncation] -> z[:, :m] / ||z[:, :m]|| for each chosen
        m (sliced by Python ints, fixed at export time), plus the heads' logits."""

        def __init__(self, source: SourceModel, dims: Sequence[int]):
            super().__init__()
            self.model = source.module
            self.shared_head = source.shared_head
            self.full_dim = source.full_dim
            self.pre_truncation = source.pre_truncation
            self.head_index = {m: i for i, m in enumerate(source.head_dims)}
            self.plan = [(o["kind"], o["dim"]) for o in plan_outputs(source, dims)]

        def forward(self, *inputs):
            out = self.model(*inputs)
            z, logits = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
            prefix_source = F.layer_norm(z, (self.full_dim,)) if self.pre_truncation == "layer_norm" else z
            results = []
            for kind, m in self.plan:
                if kind == "embedding":
                    results.append(F.normalize(prefix_source[:, :m], p=2.0, dim=-1))
                elif self.shared_head is not None:  # MRL-E: the first m columns of one shared head
                    results.append(F.linear(z[:, :m], self.shared_head.weight[:, :m], self.shared_head.bias))
                else:
                    results.append(logits[self.head_index[m]])
            return tuple(results)

    return MRLExportModule


def MRLExportModule(source: SourceModel, dims: Sequence[int]):
    """Construct the export wrapper (an nn.Module; torch is imported only here)."""
    return _build_module_class()(source, dims).eval()
