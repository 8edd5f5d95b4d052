"""The embedded demo corpus: synthetic multilingual speech with exact references.

`build_demo_corpus(OUT)` writes transcribed single-speaker utterances, scripted two-party
conversations and 3-4 party meetings (pauses, overlaps, interruptions, back-channels) made with
espeak-ng, plus RTTM and
turns.json references and a manifest, so every pipeline step can run offline. Content lives in
`script.py`, synthesis in `speak.py`, timing and references in `conversation.py`, files in
`build.py`.
"""

from minmo.demo.build import DemoSummary, build_demo_corpus
from minmo.demo.speak import EspeakError

__all__ = ["DemoSummary", "EspeakError", "build_demo_corpus"]
