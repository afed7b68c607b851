"""``requirements.txt`` is the pinned lock of ``pyproject.toml`` (every extra included), as
Airflow deployments expect it at the top level: each dependency declared is pinned there to a
version its specifier accepts, and the file says how to make it again."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from retail.settings import PROJECT_ROOT

LOCK = PROJECT_ROOT / "requirements.txt"


def _declared() -> list[Requirement]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(Requirement(name).name)] = version.split(";")[0].strip()
    return pins


def test_every_declared_dependency_is_pinned_to_a_version_it_accepts() -> None:
    pins = _pins()
    stale = []
    for req in _declared():
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(pinned, prereleases=True):
            stale.append(f"{req} (locked: {pinned or 'missing'})")
    assert not stale, (
        "requirements.txt is out of step with pyproject.toml; run the command at its top: "
        + "; ".join(stale)
    )


def test_the_lock_says_how_it_was_made_with_every_extra() -> None:
    head = LOCK.read_text().splitlines()[:3]
    assert any("uv pip compile pyproject.toml --all-extras" in line for line in head), head
    assert any("-o requirements.txt" in line for line in head), head
