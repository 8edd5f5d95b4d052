"""One reader per source layout (directory, manifest, Kaldi, Lhotse); `sources.py` dispatches.

Each reader yields `Pending` items (an item and where its audio may be) and quarantine rows;
`common.settle` checks existence in batches and turns them into `SourceItem`s.
"""
