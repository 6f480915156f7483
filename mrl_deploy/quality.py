"""What a granularity buys, measured on data: `bench --data` reads labelled data (or inputs
without labels), scores the accuracy of each head and of the precision variants, and the recall@k
of adaptive retrieval against exact search at the full dim. numpy (and the artifact's runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .comparison import row_cosines
from .errors import DataError
from .metrics import recall_at_k

RECALL_K = 10


def load_quality_data(spec: str | Path, artifact: Any, limit: int | None = None) -> dict[str, Any]:
    """`--data`: `digits` / `bbc-news` / a .npz with x (and y), or inputs without labels (.npy, .txt:
    retrieval recall only). Labelled data as data.data_for_model gives it: the model's own
    training data (its recorded fingerprint) as the test split of its recorded split, any other
    data whole."""
    from . import data as dataset_module
    from .artifact import load_inputs

    text = str(spec)
    path = Path(text)
    x, y, split = None, None, "all"
    if path.suffix.lower() == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            labelled = "x" in data and "y" in data
        if labelled:  # the training module's reader: string labels, image layouts, checks
            x, y, split = _labelled(dataset_module, path, artifact)
        else:
            x = load_inputs(path, artifact)
    elif path.suffix.lower() in (".npy", ".txt") and path.is_file():
        x = load_inputs(path, artifact)
    else:
        x, y, split = _labelled(dataset_module, text, artifact)
    if y is not None:
        y = np.asarray(y).astype(np.int64).ravel()
        if len(y) != _count(x):
            raise DataError(f"{spec}: {len(y)} labels for {_count(x)} samples")
    if limit and _count(x) > limit:
        rng = np.random.default_rng(0)   # a seeded subset: bounded time, same rows every run
        keep = np.sort(rng.choice(_count(x), size=limit, replace=False))
        x = [x[i] for i in keep] if isinstance(x, list) else (
            {k: v[keep] for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)[keep])
        y = y[keep] if y is not None else None
        split += f" (seeded subset of {limit})"
    return {"name": text, "x": x, "y": y, "split": split, "count": _count(x)}


def _count(x: Any) -> int:
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x)


def _labelled(data_module: Any, spec: Any, artifact: Any) -> tuple[Any, Any, str]:
    """(x, y, split description): the test split of the model's own training data, else all of it."""
    dataset, usage = data_module.data_for_model(spec, artifact.manifest.get("training_data"))
    split = usage["split"] + (f" (seed {usage['seed']})" if usage["split"] != "all" else "")
    return dataset.x, dataset.y, split


def retrieval_recall(vectors: np.ndarray, dims: Iterable[int], *, k: int = RECALL_K, shortlist_size: int = 200,
                     queries: int = 200, seed: int = 0, use_index: bool = True) -> dict[str, Any]:
    """recall@k against exact search at the full (largest) dim, on the data itself: a seeded set of
    rows are the queries, the rest the corpus. Per dim d: `truncated` (exact search at d alone),
    `adaptive` (exhaustive shortlist of `shortlist_size` at Ds=d, rerank at the full dim: the
    FLOPs model N*Ds + k*Dr exactly) and, with `use_index`, `adaptive_hnsw` (AdaptiveIndex: usearch
    HNSW shortlist, the deployed path)."""
    from .dims import renormalize

    vectors = np.asarray(vectors, dtype=np.float32)
    count, full = vectors.shape
    n_queries = min(queries, max(1, count // 5))
    if count - n_queries < k:
        raise DataError(f"recall@{k} needs more than {k + n_queries} samples, got {count}")
    order = np.random.default_rng(seed).permutation(count)
    q_rows, c_rows = order[:n_queries], np.sort(order[n_queries:])
    corpus, query = vectors[c_rows], vectors[q_rows]
    # On a small corpus a shortlist of 200 would be most of it and recall trivially 1: cap it at
    # 5% of the corpus (at least 2k), and report the size used.
    shortlist_size = max(k, min(shortlist_size, len(corpus), max(2 * k, len(corpus) // 20)))
    truth = _top_k(renormalize(query) @ renormalize(corpus).T, k)
    from .retrieval import AdaptiveIndex

    index_cls = AdaptiveIndex if use_index else None
    rows = []
    for dim in sorted(set(dims)):
        q_d, c_d = renormalize(query[:, :dim]), renormalize(corpus[:, :dim])
        scores = q_d @ c_d.T
        row = {"dim": dim, "truncated": recall_at_k(_top_k(scores, k), truth)}
        shortlist = _top_k(scores, shortlist_size)
        q_f, c_f = renormalize(query), renormalize(corpus)
        rerank = np.einsum("qd,qkd->qk", q_f, c_f[shortlist])
        row["adaptive"] = recall_at_k(np.take_along_axis(shortlist, _top_k(rerank, k), axis=1), truth)
        if index_cls is not None:
            row["adaptive_hnsw"], error = _hnsw_recall(index_cls, corpus, query, dim, full, k, shortlist_size, truth)
            if error:
                row["adaptive_hnsw_error"] = error
        rows.append(row)
    return {"k": k, "shortlist_size": shortlist_size, "rerank_dim": full, "queries": n_queries,
            "corpus": len(corpus), "reference": f"exact search at {full} dims", "per_dim": rows,
            "hnsw": index_cls is not None}


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _hnsw_recall(index_cls: Any, corpus, query, dim, full, k, shortlist_size, truth) -> tuple[float | None, str | None]:
    """(recall, None) or (None, why): a failing index is reported in the JSON, not fatal to the bench."""
    try:
        index = index_cls.build(corpus, shortlist_dim=dim, rerank_dim=full, dtype="f32")
        ids, _ = index.search(query, k=k, shortlist_size=shortlist_size)
    except Exception as exc:  # noqa: BLE001 - another module's failure must not lose the timings
        return None, f"{type(exc).__name__}: {exc}"
    return recall_at_k(np.asarray(ids), truth), None


def measure_quality(artifact: Any, data: dict[str, Any], dims: Sequence[int], *, runtime: str | None,
                    variant: str, threads: int | None, shortlist_size: int, variants: Sequence[str] = (),
                    say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Accuracy per head and retrieval recall with `variant`; for each of `variants` (e.g. the
    fp16/int8 models that were timed) its accuracy per head and its embeddings' cosine to
    `variant`'s, so an edge user sees what the faster model costs in quality."""
    quality: dict[str, Any] = {"data": data["name"], "split": data["split"], "samples": data["count"],
                               "runtime": runtime, "variant": variant}
    labelled = data["y"] is not None
    say(f"quality: encoding {data['count']} samples ({variant})")
    vectors, accuracy = _encode_and_score(artifact, data, dims, runtime, variant, threads)
    if accuracy is not None:
        quality["accuracy"] = accuracy
    others = {}
    for other in (v for v in variants if v != variant):
        say(f"quality: encoding {data['count']} samples ({other})")
        other_vectors, other_accuracy = _encode_and_score(artifact, data, dims, runtime, other, threads)
        cosine = row_cosines(other_vectors, vectors)
        others[other] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
        if other_accuracy is not None:
            others[other]["accuracy"] = other_accuracy
    if others:
        quality["variants"] = others
    if labelled and not artifact.logit_dims:
        quality["accuracy_skipped"] = "the artifact has no classifier heads"
    say("quality: recall of adaptive retrieval")
    try:
        quality["retrieval"] = retrieval_recall(vectors, [d for d in dims if d <= vectors.shape[1]],
                                                shortlist_size=shortlist_size)
    except DataError as exc:
        quality["retrieval"] = None
        quality["retrieval_skipped"] = str(exc)
    return quality


def _encode_and_score(artifact: Any, data: dict[str, Any], dims: Sequence[int], runtime: str | None, variant: str,
                      threads: int | None) -> tuple[np.ndarray, dict[str, float] | None]:
    """One pass of the encoder: the largest exported embedding, and top-1 accuracy per head."""
    top = max(artifact.exported_dims)
    heads = [d for d in dims if d in artifact.logit_dims] if data["y"] is not None else []
    names = [f"embedding_{top}"] + [f"logits_{d}" for d in heads]
    outputs = artifact.run(data["x"], names, runtime=runtime, variant=variant, threads=threads)
    accuracy = None
    if heads:
        y = data["y"]
        classes = {o["dim"]: o.get("classes") for o in artifact.manifest["outputs"] if o["kind"] == "logits"}
        if y.size and classes.get(heads[0]) and (y.min() < 0 or y.max() >= classes[heads[0]]):
            raise DataError(f"labels range {y.min()}..{y.max()} but the heads have {classes[heads[0]]} classes")
        accuracy = {str(d): float(np.mean(outputs[f"logits_{d}"].argmax(axis=1) == y)) for d in heads}
    return outputs[f"embedding_{top}"].astype(np.float32, copy=False), accuracy
