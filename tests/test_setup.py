"""The set-up's own files: constraints.txt pins what pyproject.toml asks for, the pinning tool
keeps other Pythons' pins, and pytest carries a per-test timeout."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself installs tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pin_tool():
    spec = importlib.util.spec_from_file_location(
        "pin_constraints", ROOT / "tools/pin_constraints.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, dict[str, str]]:
    """Python version -> distribution -> pinned version, from constraints.txt."""
    pins: dict[str, dict[str, str]] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        [spec] = requirement.specifier
        assert spec.operator == "==", line
        python = re.fullmatch(r'python_version == "(3\.\d+)"', str(requirement.marker))
        assert python, f"{line}: every pin names the Python it was tested on"
        pins.setdefault(python[1], {})[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_every_dependency_is_pinned_for_every_python_the_file_covers():
    project = _pyproject()["project"]
    wanted = [
        Requirement(r)
        for r in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    ]
    pins = _pins()
    assert pins, "constraints.txt pins nothing"
    for python, pinned in pins.items():
        missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pinned]
        assert not missing, f"Python {python}: not pinned (run `make constraints`): {missing}"
        for requirement in wanted:
            version = pinned[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(version, prereleases=True), (python, requirement)
    assert pins["3.11"]["torch"] == "2.14.1" and pins["3.11"]["torchaudio"] == "2.11.0"


def test_the_installed_venv_is_the_pinned_one():
    """What CI runs with is what the file pins (for this Python), so the pins are tested ones."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pinned = _pins().get(python)
    if pinned is None:
        return  # a Python the file has no pins for resolves freely, as pyproject.toml allows
    installed = {
        canonicalize_name(name): version
        for name, version in (pin.split("==", 1) for pin in _pin_tool().frozen())
    }
    differ = {
        name: (version, installed.get(name))
        for name, version in pinned.items()
        if installed.get(name) != version
    }
    assert not differ, f"pinned vs installed: {differ}"


def test_refreshing_the_pins_keeps_other_pythons():
    tool = _pin_tool()
    ours = tool.marker()
    other = 'numpy==1.26.4 ; python_version == "3.9"'
    old = [other, f"numpy==2.0.0 ; {ours}", "# a comment", ""]
    lines = tool.merged(old, ["Numpy==2.3.5", "absl-py==2.5.1"])
    assert lines == [f"absl-py==2.5.1 ; {ours}", other, f"Numpy==2.3.5 ; {ours}"]
    assert Marker(ours).evaluate()


def test_each_test_has_a_timeout():
    assert _pyproject()["tool"]["pytest"]["ini_options"]["timeout"] == 600
