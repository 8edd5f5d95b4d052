"""The offline backend's speaker-count estimate (`cluster_speakers`) on synthetic d-vectors, and
the diarize step's speaker-count settings (an exact num_speakers, or bounds for meetings).

The synthetic embeddings look like Resemblyzer's where it matters here: non-negative unit
vectors sharing a large common part (channel, language), each voice's centroid 0.6-0.8
cosine-similar to the others (real distinct voices measured 0.58-0.89), windows about 0.9
similar to their own centroid. No model is loaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from minmo.config import ConfigError
from minmo.diarization.offline import OfflineDiarizerConfig, cluster_speakers, silhouette
from pipelines.diarize import DiarizeConfig

CONFIG = OfflineDiarizerConfig()
SIZES = (70, 45, 30, 20)  # windows per voice: unbalanced, as speaking time is in a meeting


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def voices(k: int, seed: int, spread: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 256), true voice per point) for k voices."""
    rng = np.random.default_rng(seed)
    common = _unit(np.abs(rng.standard_normal(256)))
    points, truth = [], []
    for voice in range(k):
        centre = _unit(common + spread * _unit(rng.standard_normal(256)))
        noise = 0.5 * rng.standard_normal((SIZES[voice], 256)) / 16
        points.append(_unit(np.maximum(centre + noise, 0.0)))
        truth += [voice] * SIZES[voice]
    return np.concatenate(points), np.array(truth)


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of points whose cluster's majority voice is their own."""
    hits = sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels))
    return hits / len(labels)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_count_is_estimated_between_the_bounds(k: int, seed: int) -> None:
    points, truth = voices(k, seed)
    for low, high in ((1, 8), (2, 4)):  # no hints (default max 8); a meeting's 2..4
        labels = cluster_speakers(points, low, high, CONFIG)
        assert len(np.unique(labels)) == k, (low, high)
        assert _purity(labels, truth) >= 0.98


def test_the_bounds_hold_and_an_exact_count_overrides() -> None:
    points, _ = voices(4, 0)
    assert len(np.unique(cluster_speakers(points, 2, 3, CONFIG))) <= 3  # max_speakers caps it
    three, _ = voices(3, 0)
    assert len(np.unique(cluster_speakers(three, 3, 3, CONFIG))) == 3  # num_speakers = 3


def test_one_voice_stays_one_and_two_party_bounds_do_not_over_split() -> None:
    """A forced split of one voice merges back (the backend then refuses it as
    single_speaker); two voices under a meeting's bounds stay two."""
    one, _ = voices(1, 3)
    assert len(np.unique(cluster_speakers(one, 2, 4, CONFIG))) == 1
    two, _ = voices(2, 4)
    assert len(np.unique(cluster_speakers(two, 2, 4, CONFIG))) == 2


def test_same_points_same_labels() -> None:
    points, _ = voices(3, 5)
    first = cluster_speakers(points, 1, 8, CONFIG)
    assert np.array_equal(first, cluster_speakers(points.copy(), 1, 8, CONFIG))


def test_silhouette_prefers_the_true_partition() -> None:
    points, truth = voices(3, 6)
    centred = _unit(points - points.mean(0))
    wrong = np.random.default_rng(0).permutation(truth)
    assert silhouette(centred, truth) > 0.3 > silhouette(centred, wrong)
    assert silhouette(centred, np.zeros(len(points), int)) == -1.0


def test_diarize_speaker_counts() -> None:
    meeting = DiarizeConfig(num_speakers=None, min_speakers=2, max_speakers=4)
    assert (meeting.num_speakers, meeting.min_speakers, meeting.max_speakers) == (None, 2, 4)
    assert DiarizeConfig(num_speakers=0, max_speakers=4).num_speakers is None  # --num-speakers 0
    assert DiarizeConfig().num_speakers == 2  # two-party default unchanged
    with pytest.raises(ConfigError, match="num_speakers: null"):
        DiarizeConfig(max_speakers=4)  # the default exact 2 would silently win over the bound
    with pytest.raises(ConfigError, match="above max_speakers"):
        DiarizeConfig(num_speakers=None, min_speakers=3, max_speakers=2)
    with pytest.raises(ConfigError, match=">= 1"):
        DiarizeConfig(num_speakers=None, max_speakers=0)
