"""Pseudo-labelling models: audio -> labels a corpus lacks (`minmo annotate`).

rich_tags: SenseVoice's rich-transcription tags and their mapping onto our label vocabularies
(pure text, no model); sensevoice: loading a local SenseVoiceSmall directory through funasr and
labelling batches of clips with a confidence per label.
"""
