"""Starting (or joining) Ray: a local instance by default, a cluster when RAY_ADDRESS is set.

Every step calls `ensure_ray()` instead of `ray.init()` so that tests and callers that already
started Ray (a local multi-node test cluster, `ray job submit`) keep their instance.
"""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, progress: bool = True) -> None:
    import ray

    # Token auth is on by default in recent Ray; a local single-user instance does not need it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # address="local" always starts a fresh instance: a bare ray.init() would try to
            # join whatever cluster /tmp/ray/ray_current_cluster last named, even a dead one.
            ray.init(
                address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True
            )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False


def model_actors(
    uses_gpu: bool, gpus_per_actor: float | None, actors: int | None
) -> tuple[int, float]:
    """(actor count, GPUs per actor) for a stage that runs a model, read from the live cluster.

    Decided when the step runs, not in the job spec, so that one spec asks for GPUs on a GPU
    cluster and for none on a laptop: by default an actor takes one GPU when the cluster has
    any and the stage's model can use one (`uses_gpu`), and then there is one actor per GPU;
    otherwise one actor per CPU. `gpus_per_actor` and `actors` override either default.
    """
    import ray

    resources = ray.cluster_resources()
    gpus = gpus_per_actor
    if gpus is None:
        gpus = 1.0 if uses_gpu and resources.get("GPU", 0) >= 1 else 0.0
    slots = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1)
    return max(1, actors or int(slots)), gpus
