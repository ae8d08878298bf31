"""The requirement files agree: the image's list is generated, the lock covers both inputs.

requirements.in (runtime) and requirements-dev.in (development and tests) are
the inputs; requirements.txt is the lock of both; docker/requirements-runtime.txt
is generated from requirements.in and the lock by scripts/runtime_requirements.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def generator():
    spec = importlib.util.spec_from_file_location("runtime_requirements", ROOT / "scripts" / "runtime_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def requirements(path: Path) -> dict[str, str]:
    """canonical name -> the line, for one input file (``-r`` includes left out)."""
    gen = generator()
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            out[gen.canonical(re.split(r"[\[=<>~ ]", line)[0])] = line
    return out


def test_the_image_list_is_generated_from_the_runtime_input():
    """Fails when requirements.in or the lock changed and `make requirements` was not run."""
    gen = generator()
    assert (ROOT / "docker" / "requirements-runtime.txt").read_text(encoding="utf-8") == gen.render(), \
        "docker/requirements-runtime.txt is out of date: run `make requirements`"


def test_the_check_notices_a_stale_list(tmp_path):
    """The comparison is real: a runtime input with one more package renders another list."""
    gen = generator()
    runtime_in = tmp_path / "requirements.in"
    runtime_in.write_text((ROOT / "requirements.in").read_text(encoding="utf-8") + "pytest==9.2.0\n")
    assert gen.render(runtime_in) != gen.render()
    assert gen.render(runtime_in).endswith("pytest==9.2.0\n")


def test_an_input_pin_that_disagrees_with_the_lock_is_refused(tmp_path):
    gen = generator()
    runtime_in = tmp_path / "requirements.in"
    runtime_in.write_text("Flask==0.1\n")
    with pytest.raises(ValueError, match="Flask"):
        gen.render(runtime_in)


def test_inputs_are_pinned_split_and_locked():
    gen = generator()
    runtime, dev = requirements(ROOT / "requirements.in"), requirements(ROOT / "requirements-dev.in")
    lock = gen.read_lock()
    assert set(runtime) & set(dev) == set(), "a package is in both requirements.in and requirements-dev.in"
    assert "-r requirements.in" in (ROOT / "requirements-dev.in").read_text(encoding="utf-8").splitlines()
    for name, line in {**runtime, **dev}.items():
        assert "==" in line, f"{line} is not pinned"
        assert name in lock, f"{line} is not in the lock requirements.txt"
        assert line.split("==", 1)[1] == lock[name], f"{line} differs from the lock ({lock[name]})"


def test_runtime_requirements_are_pinned_like_the_lock():
    """(Moved from tests/test_compose.py; the development packages now read from requirements-dev.in.)"""
    pins = {}
    for line in (ROOT / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pins[re.split(r"[\[=<>~ ]", line)[0].lower()] = line
    lock = {l.split("==")[0].lower().replace("_", "-") for l in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in l}
    image = set()
    for line in (ROOT / "docker" / "requirements-runtime.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name = re.split(r"[\[=<>~ ]", line)[0].lower()
        image.add(name.replace("_", "-"))
        assert name in pins, f"{name} is in the image but not in requirements.in"
        assert pins[name] == line or "==" not in pins[name], f"{line} differs from requirements.in: {pins[name]}"
        assert name.replace("_", "-") in lock, f"{name} is not locked in requirements.txt"
    # every runtime package of requirements.in is in the image (test/dev tools are not)
    dev_only = set(requirements(ROOT / "requirements-dev.in"))
    missing = set(pins) - dev_only - image
    assert not missing, f"runtime packages missing from docker/requirements-runtime.txt: {missing}"
