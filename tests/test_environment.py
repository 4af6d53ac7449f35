"""The conda environment, the package metadata and the CI entry point agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_pip_requirements() -> list[str]:
    """The entries of the `pip:` section of environment.yml, in order."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    entries = []
    for line in lines[start + 1 :]:
        if not line.strip() or len(line) - len(line.lstrip()) < indent:
            break
        entries.append(line.strip().removeprefix("- ").strip())
    return entries


def _normalise(requirement: str) -> str:
    name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower().replace("_", "-") + spec.replace(" ", "")


def test_conda_pip_section_lists_exactly_the_package_requirements():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["dev"]
    # dev names its own extras as "detutils[extra]": conda lists what they hold
    wanted = [
        item
        for requirement in wanted
        for item in (
            extras[requirement[len("detutils[") : -1]]
            if requirement.startswith("detutils[")
            else [requirement]
        )
    ]
    entries = _conda_pip_requirements()
    assert entries[-1] == "-e ."  # the package itself, after its requirements
    assert sorted(map(_normalise, entries[:-1])) == sorted(map(_normalise, wanted))


def test_conda_python_matches_requires_python():
    conda = (ROOT / "environment.yml").read_text()
    version = re.search(r"^\s*- python=(\d+\.\d+)\s*$", conda, re.M).group(1)
    assert _pyproject()["project"]["requires-python"] == f">={version},<3.{int(version[2:]) + 1}"


def test_torch_pins_are_exact():
    dependencies = _pyproject()["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies
    assert "torchvision==0.29.1" in dependencies


def test_ci_runs_the_readme_test_command_with_strict_nbval():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "make test" in (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "--nbval " in makefile and "--nbval-lax" not in makefile
    assert "--nbval-sanitize-with notebooks/sanitize.cfg" in makefile
