"""The path type every reader and writer takes: a local path or an object-store URI string.

Owns only the alias, so that modules which accept a path (the trainer's data, the diarization
metrics) agree on one name without depending on the filesystem layer's implementation.
"""

from __future__ import annotations

import os
from typing import TypeAlias

Pathlike: TypeAlias = str | os.PathLike[str]
