"""Pin every installed distribution of this venv in a pip constraints file, for this Python.

    python tools/pin_constraints.py constraints.txt     (run by `make constraints`)

The pins are what `pip freeze --exclude-editable` reports (minmo itself left out), each with the
marker `; python_version == "X.Y"` of the Python running this: a release that supports one
Python may not exist for another (numpy, scipy, torch drop old ones), so the pins tested on one
version must not bind another. Pins the file holds for other Python versions are kept, so one
file serves every supported image; a Python with no pins in it resolves freely, as pyproject.toml
allows. `make` installs with `pip install -c constraints.txt -e '.[dev]'`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEADER = """\
# Every direct and transitive dependency at the version CI tested, per Python version.
# Used by `make` (pip install -c constraints.txt -e '.[dev]'); refresh with `make constraints`
# (tools/pin_constraints.py), then run `make test` before committing the result.
"""


def marker() -> str:
    return f'python_version == "{sys.version_info.major}.{sys.version_info.minor}"'


def frozen() -> list[str]:
    """`name==version` of every distribution installed here but the editable project."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = [line.strip() for line in out.splitlines() if line.strip()]
    bad = [pin for pin in pins if "==" not in pin or pin.startswith("-")]
    if bad:
        sys.exit(f"not a plain pin (a URL or VCS install?): {bad}; install from a registry")
    return pins


def merged(old: list[str], pins: list[str]) -> list[str]:
    """The file's lines: other Pythons' pins kept, this one's replaced, sorted by name."""
    ours = marker()
    kept = [line for line in old if line and not line.startswith("#") and ours not in line]
    return sorted([*kept, *(f"{pin} ; {ours}" for pin in pins)], key=str.lower)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
    old = path.read_text().splitlines() if path.exists() else []
    lines = merged([line.strip() for line in old], frozen())
    path.write_text(HEADER + "\n".join(lines) + "\n")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(f"{path}: {sum(marker() in line for line in lines)} pins for Python {version}")


if __name__ == "__main__":
    main()
