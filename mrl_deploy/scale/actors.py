"""Shards of a ShardedIndex in Ray actors: each actor loads one AdaptiveIndex directory (on
whichever node Ray places it: SPREAD over the nodes by default, so an index larger than one
machine's RAM is held by many) and answers search / exact / documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .cluster import ensure, failure, ray_module


class ShardServer:
    """The actor's class (made remote in actor_shards): one AdaptiveIndex, memory-mapped."""

    def __init__(self, directory: str, view: bool = True, verify: bool = False):
        from ..retrieval import AdaptiveIndex

        self.index = AdaptiveIndex.load(directory, view=view, verify=verify)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.index, method)(*args, **kwargs)

    def count(self) -> int:
        return len(self.index)

    def node(self) -> str:
        """The Ray node this shard lives on."""
        import ray

        return ray.get_runtime_context().get_node_id()


class RayFuture:
    def __init__(self, ref: Any, what: str):
        self.ref, self.what = ref, what

    def result(self, timeout: float | None = None) -> Any:
        ray = ray_module()
        try:
            return ray.get(self.ref, timeout=timeout)
        except Exception as exc:
            raise failure(exc, self.what) from None


class ActorShard:
    """A shard in a Ray actor, behind the same submit() as sharded.LocalShard."""

    def __init__(self, actor: Any, name: str):
        self.actor, self.name = actor, name

    def submit(self, method: str, *args: Any, **kwargs: Any) -> RayFuture:
        return RayFuture(self.actor.call.remote(method, *args, **kwargs), f"shard {self.name} {method}")

    def close(self) -> None:
        ray_module().kill(self.actor)


def actor_shards(directories: Sequence[Path], settings: dict[str, Any], *, view: bool = True, verify: bool = False,
                 num_cpus: float = 1, timeout: float = 300.0, **options: Any) -> list[ActorShard]:
    """One actor per shard directory, each reserving `num_cpus` (a shard's searches keep a core
    busy; Ray places actors that reserve nothing without spreading them), spread over the nodes;
    more Ray actor `options` (memory=, resources=, ...) pass through. Each actor is checked to hold
    the count sharded.json says before this returns."""
    from ..errors import ArtifactError, MRLDeployError

    ray, _ = ensure()               # the actors live as long as this session: keep what was started
    remote = ray.remote(ShardServer).options(num_cpus=num_cpus, scheduling_strategy="SPREAD", **options)
    shards = [ActorShard(remote.remote(str(d), view, verify), Path(d).name) for d in directories]
    for shard, entry in zip(shards, settings["shards"]):
        try:
            count = RayFuture(shard.actor.count.remote(), f"loading shard {shard.name}").result(timeout)
        except Exception as exc:
            for other in shards:
                other.close()
            if isinstance(exc, MRLDeployError) and "GetTimeoutError" in str(exc):
                raise MRLDeployError(f"shard {shard.name} did not load within {timeout:g} s: the cluster may lack "
                                     f"room for {len(shards)} shard actors of {num_cpus:g} CPUs each") from None
            raise
        if count != entry["count"]:
            raise ArtifactError(f"shard {shard.name} holds {count} vectors; the sharded index says {entry['count']}")
    return shards
