"""FLOPs, counted as 2 x multiply-adds (torch's FlopCounterMode convention), per sample.

The encoder costs the same at every dim; what the dim changes is the head, the bytes per vector
and the retrieval cost."""

from __future__ import annotations

from typing import Any

FLOPS_UNIT = "FLOPs per sample (2 x multiply-adds, torch FlopCounterMode)"


def count_flops(module: Any, inputs: tuple, batch: int) -> int:
    """FLOPs of one forward pass of `module(*inputs)` divided by the batch size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return int(counter.get_total_flops() // max(batch, 1))


def head_flops(dim: int, num_classes: int) -> int:
    """A linear head on an m-d prefix: m x C multiply-adds (bias adds are not counted, as in torch)."""
    return 2 * dim * num_classes


def exact_search_flops(corpus_size: int, dim: int) -> int:
    """Brute-force inner products of one query against N vectors of d dims: N x d multiply-adds."""
    return 2 * corpus_size * dim


def adaptive_search_flops(corpus_size: int, shortlist_dim: int, shortlist_size: int, rerank_dim: int) -> int:
    """The paper's model of adaptive retrieval with an exhaustive shortlist: N x Ds + k x Dr
    multiply-adds (an HNSW shortlist visits far fewer than N vectors)."""
    return 2 * (corpus_size * shortlist_dim + shortlist_size * rerank_dim)
