"""Ray sessions and tasks: the only place that starts or joins a Ray cluster."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from ..errors import MRLDeployError, require


def ray_module():
    return require("ray", "ray", "scale-out on Ray")


def ensure(address: str | None = None, **init_options: Any) -> tuple[Any, bool]:
    """(ray, started): the Ray session this process already has, or a new one joined at
    `address` ("auto", "ray://host:10001", "host:6379") or, without one, a local Ray instance."""
    ray = ray_module()
    if ray.is_initialized():
        return ray, False
    options = {"include_dashboard": False, "logging_level": logging.WARNING, **init_options}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise MRLDeployError(f"cannot start or join {where}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return ray, True


@contextmanager
def connect(address: str | None = None, **init_options: Any) -> Iterator[Any]:
    """ensure(), and at the end shut down (disconnect from) what was started or joined here.
    Yields the ray module."""
    ray, started = ensure(address, **init_options)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def unwrap(exc: BaseException) -> BaseException:
    """The user's error inside a Ray task / actor error (a MRLDeployError keeps its one line)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MRLDeployError):
            return exc
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None:
            break
        exc = cause
    return exc


def failure(exc: BaseException, what: str) -> MRLDeployError:
    inner = unwrap(exc)
    if isinstance(inner, MRLDeployError):
        return inner
    text = str(inner).strip().splitlines()
    return MRLDeployError(f"{what} failed on Ray: {type(inner).__name__}: {text[-1] if text else ''}".rstrip(": "))


def run_tasks(function: Callable, arguments: Sequence[tuple], *, progress: Callable[[int, int], None] | None = None,
              num_cpus: float = 1, what: str = "a task") -> list:
    """function(*args) for each args as Ray tasks (in parallel, as resources allow); the results
    in the order of `arguments`. A failing task fails the whole call with its error."""
    with connect() as ray:
        remote = ray.remote(function).options(num_cpus=num_cpus, max_retries=1)
        refs = [remote.remote(*args) for args in arguments]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                results[where[ready[0]]] = ray.get(ready[0])
                if progress:
                    progress(len(refs) - len(pending), len(refs))
        except Exception as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise failure(exc, what) from None
        return results
