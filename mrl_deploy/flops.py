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


def retrieval_flops(corpus_size: int, dim: int, rerank_dim: int, shortlist_size: int) -> dict[str, int]:
    """Per-query retrieval cost at one dim: exact search at `dim`, exact search at `rerank_dim` (the
    full-dim baseline), and adaptive retrieval (shortlist at Ds=`dim`, rerank k=`shortlist_size`
    candidates at Dr=`rerank_dim`). The shortlist never holds more than the corpus."""
    shortlist_size = min(shortlist_size, corpus_size)
    return {
        "exact": exact_search_flops(corpus_size, dim),
        "exact_full": exact_search_flops(corpus_size, rerank_dim),
        "adaptive": adaptive_search_flops(corpus_size, dim, shortlist_size, rerank_dim),
    }


def funnel_search_flops(corpus_size: int, funnel: list[tuple[int, int]]) -> int:
    """A multi-stage funnel [(dim_1, keep_1), (dim_2, keep_2), ...]: stage 1 scores all N vectors at
    dim_1, stage i > 1 scores the keep_{i-1} survivors of the previous stage at dim_i."""
    total, candidates = 0, corpus_size
    for dim, keep in funnel:
        total += 2 * candidates * dim
        candidates = min(keep, candidates)
    return total
