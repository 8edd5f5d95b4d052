"""Speaker diarization backends: audio in memory -> who spoke when, with no Ray and no files.

`pipelines/diarize.py` wraps these in Ray Data stages; keeping the algorithms here lets tests,
benchmarks and notebooks call them directly on a waveform.
"""
