"""A random-init pyannote speaker-diarization pipeline written to disk, for tests and benchmarks.

`build_tiny_pyannote_pipeline(dir)` writes the same layout as a real pipeline repository
(`pyannote/speaker-diarization-community-1`), so `Pipeline.from_pretrained(dir)` and
`PyannoteDiarizer(dir)` load it through the code path real weights take:

    dir/config.yaml                       SpeakerDiarization, $model/segmentation|embedding|plda
    dir/segmentation/pytorch_model.bin    PyanNet, powerset over 3 local speakers (≤ 2 at once)
    dir/embedding/pytorch_model.bin       ResNet speaker embedding, 256-d
    dir/plda/xvec_transform.npz           256 -> 128 centring + LDA
    dir/plda/plda.npz                     128-d PLDA (loaded even when clustering is not VBx)

The weights are random, so the diarization it produces is garbage (anything from no speech to
every speaker talking throughout): use it to test plumbing and to time the pipeline, never to
judge accuracy.

`full_size=True` keeps community-1's architectures (PyanNet defaults, WeSpeakerResNet34): a
timing stand-in for the real pipeline. The default is small enough for unit tests on CPU: a
1-layer PyanNet LSTM and a ResNet with one block per stage, 4 base channels and 16 mel bins
(`SmallResNetEmbedding`), since the embedding step is almost all of the pipeline's CPU time.

Paths may contain any words: pyannote picks its embedding loader by substring ("wespeaker",
"speechbrain", "nvidia") only for an embedding given as a string, and the `$model/embedding`
entry below reaches it as a dict (pyannote expands `$model/...` itself), so the output
directory's name cannot misroute it; the tests load from such a path to keep this true.

This module must not download anything; it imports pyannote lazily so importing it is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from schemas.units import SAMPLE_RATE_HZ

EMBEDDING_DIM = 256
PLDA_DIM = 128
SEGMENTATION_CHUNK_S = 10.0

_CONFIG_YAML = """\
# Random-init pipeline written by minmo.testing.pyannote_tiny (NOT trained weights).
dependencies:
  pyannote.audio: {version}
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    embedding: $model/embedding
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    plda: $model/plda
    segmentation: $model/segmentation
    segmentation_batch_size: 32
params:
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
  segmentation:
    min_duration_off: 0.0
"""


def build_tiny_pyannote_pipeline(out_dir: Path, *, full_size: bool = False, seed: int = 0) -> Path:
    """Write a complete random-init diarization pipeline into `out_dir`; return `out_dir`.

    `full_size` keeps the real architectures (slow on CPU); `seed` makes the weights repeatable.
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"  # no telemetry (see pyannote_backend)
    import pyannote.audio
    import torch

    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        _save_model(_segmentation_model(full_size), out_dir / "segmentation")
        _save_model(_embedding_model(full_size), out_dir / "embedding")
    _save_plda(out_dir / "plda", np.random.default_rng(seed))
    (out_dir / "config.yaml").write_text(_CONFIG_YAML.format(version=pyannote.audio.__version__))
    return out_dir


def _segmentation_model(full_size: bool) -> Any:
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    if full_size:
        model = PyanNet()
    else:
        model = PyanNet(
            lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True},
            linear={"hidden_size": 16, "num_layers": 1},
        )
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=SEGMENTATION_CHUNK_S,
        min_duration=SEGMENTATION_CHUNK_S,
        warm_up=(0.0, 0.0),
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    model.setup()  # adds the task-dependent classifier, as loading a checkpoint does
    return model


def _embedding_model(full_size: bool) -> Any:
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    model = (
        WeSpeakerResNet34() if full_size else __getattr__("SmallResNetEmbedding")(num_mel_bins=16)
    )
    model.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=SEGMENTATION_CHUNK_S
    )
    model.setup()
    return model


def _save_model(model: Any, folder: Path) -> None:
    """Lightning-style checkpoint, as `Model.from_pretrained` expects (`pytorch_model.bin`)."""
    import lightning
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)  # adds pyannote's architecture + specifications
    torch.save(checkpoint, folder / "pytorch_model.bin")


def _save_plda(folder: Path, rng: np.random.Generator) -> None:
    """Random but well-posed VBx files: orthonormal LDA and PLDA transforms, positive psi."""
    folder.mkdir(parents=True, exist_ok=True)
    lda, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIM, PLDA_DIM)))
    np.savez(
        folder / "xvec_transform.npz",
        mean1=np.zeros(EMBEDDING_DIM),
        mean2=np.zeros(PLDA_DIM),
        lda=lda,
    )
    tr, _ = np.linalg.qr(rng.standard_normal((PLDA_DIM, PLDA_DIM)))
    psi = np.sort(rng.uniform(0.1, 10.0, PLDA_DIM))[::-1].copy()
    np.savez(folder / "plda.npz", mu=np.zeros(PLDA_DIM), tr=tr, psi=psi)


def _small_resnet_class() -> type:
    from pyannote.audio.models.embedding.wespeaker import BaseWeSpeakerResNet
    from pyannote.audio.models.embedding.wespeaker.resnet import BasicBlock, ResNet

    class _SmallResNetEmbedding(BaseWeSpeakerResNet):
        """WeSpeakerResNet34's front end and pooling with a [1, 1, 1, 1]-block, 4-channel ResNet."""

        def __init__(
            self,
            sample_rate: int = SAMPLE_RATE_HZ,
            num_channels: int = 1,
            num_mel_bins: int = 80,
            frame_length: int = 25,
            frame_shift: int = 10,
            dither: float = 0.0,
            window_type: str = "hamming",
            use_energy: bool = False,
            task: Any = None,
        ) -> None:
            super().__init__(
                sample_rate=sample_rate,
                num_channels=num_channels,
                num_mel_bins=num_mel_bins,
                frame_length=frame_length,
                frame_shift=frame_shift,
                dither=dither,
                window_type=window_type,
                use_energy=use_energy,
                task=task,
            )
            self.resnet = ResNet(
                BasicBlock,
                [1, 1, 1, 1],
                m_channels=4,
                feat_dim=num_mel_bins,
                embed_dim=EMBEDDING_DIM,
                pooling_func="TSTP",
                two_emb_layer=False,
            )

    return _SmallResNetEmbedding


def __getattr__(name: str) -> Any:
    # The class subclasses pyannote's; build it on first use so `import` stays cheap. The
    # checkpoint names it `minmo.testing.pyannote_tiny.SmallResNetEmbedding`, which
    # `Model.from_pretrained` resolves through this hook.
    if name == "SmallResNetEmbedding":
        if name in globals():
            return globals()[name]
        cls = _small_resnet_class()
        cls.__name__ = cls.__qualname__ = "SmallResNetEmbedding"
        cls.__module__ = __name__
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
