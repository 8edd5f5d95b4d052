"""`model_actors`: model stages ask for a GPU per actor exactly when the cluster has GPUs and
their model can use one, and keep the CPU sizing otherwise."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from pipelines.ray_runtime import model_actors


@pytest.fixture()
def resources(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """What `ray.cluster_resources()` answers; each test fills it."""
    answer: dict[str, float] = {}
    monkeypatch.setattr(ray, "cluster_resources", lambda: answer)
    return answer


def test_a_gpu_cluster_gives_a_model_one_gpu_per_actor(resources: dict[str, Any]) -> None:
    resources.update(CPU=64.0, GPU=8.0)
    assert model_actors(True, None, None) == (8, 1.0)
    assert model_actors(True, 0.5, None) == (16, 0.5)
    assert model_actors(True, None, 3) == (3, 1.0)


def test_without_gpus_or_a_gpu_model_actors_follow_the_cpus(resources: dict[str, Any]) -> None:
    resources.update(CPU=64.0, GPU=8.0)
    assert model_actors(False, None, None) == (64, 0.0)  # e.g. diarize's channels backend
    resources.pop("GPU")
    assert model_actors(True, None, None) == (64, 0.0)
    assert model_actors(True, None, 2) == (2, 0.0)
    resources.clear()
    assert model_actors(True, None, None) == (1, 0.0)
