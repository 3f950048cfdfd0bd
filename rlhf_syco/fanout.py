"""Spread a stage's independent pieces of work over `compute.num_workers` Ray actors, or do them here.

    with Workers(config, make) as workers:
        for result in workers.map(work, items):  # work(state, item), in the order of items
            ...                                  # checkpoint it

`make()` builds a worker's state once (the policy for sampling, the reward models for scoring), on first use.
When the stage runs inside the pipeline's Ray session and `compute.num_workers > 1`, each worker is an actor
with `compute.cpus_per_worker` CPUs and `compute.gpus_per_worker` GPUs (one per GPU on a cluster), started in
the driver's folder; otherwise the state lives in this process. Items carry their own seeds, so results do
not depend on which worker does which item.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Callable, Iterable, Iterator


def fans_out(config) -> bool:
    """Whether a stage of this config hands its work to actors from this process."""
    if config.compute.num_workers < 2:
        return False
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


class Workers:
    def __init__(self, config, make: Callable[[], Any]):
        self.config, self.make = config, make
        self.actors, self.state = [], None

    def map(self, work: Callable[[Any, Any], Any], items: Iterable) -> Iterator:
        items = list(items)
        if not items:
            return iter(())
        if not fans_out(self.config):
            if self.state is None:
                self.state = self.make()
            return (work(self.state, item) for item in items)
        from ray.util import ActorPool

        if not self.actors:
            self.actors = self._start()
        return ActorPool(self.actors).map(lambda actor, item: actor.run.remote(work, item), items)

    def _start(self) -> list:
        import ray

        from rlhf_syco.pipeline import worker_cpus

        compute = self.config.compute
        actor = ray.remote(_Worker).options(num_cpus=worker_cpus(self.config, compute.num_workers),
                                            num_gpus=compute.gpus_per_worker)
        return [actor.remote(self.config, self.make, os.getcwd()) for _ in range(compute.num_workers)]

    def close(self) -> None:
        """Stop the actors, or free the state here (and its GPU memory) before the next model loads."""
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor)
        if hasattr(self.state, "close"):  # an engine that holds memory outside Python's reach (vLLM)
            self.state.close()
        self.actors, self.state = [], None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Worker:
    def __init__(self, config, make: Callable[[], Any], cwd: str):
        from rlhf_syco.pipeline import enter_worker

        enter_worker(config, cwd)
        self.state = make()

    def run(self, work: Callable[[Any, Any], Any], item):
        return work(self.state, item)
