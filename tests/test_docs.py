"""The repository stands on its own: its text cites only what a reader can open.

Code, tests, configs, scripts and READMEs may cite the paper, the anchors' public
repositories, or files of this repository (``docs/method.md`` for the method's maths,
settings and published numbers), never notes that live outside it (a spec, a list of
baselines, numbered tasks of a tracker the reader cannot see).

Not searched: the recorded outputs of past benchmark runs (``benchmarks/results/<run>/``),
which are kept as the run wrote them; the README beside them is searched.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SEARCHED = ("slkd", "tests", "benchmarks", "scripts", "docs", "mdistiller_configs", "patches", ".ci")
TOP_FILES = ("README.md", "pyproject.toml", "setup.py")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt", ".patch", ""}
SKIPPED_DIRS = {"__pycache__", ".venv", "build", "dist"}

SHARED = r"(?<![\w.])\.{0,2}/?shared/"
CI_LAYOUT = {".ci/run": "reads the host trees where the CI lays them out, ../shared/hosts/ beside the clone"}
"""Files that may name ../shared/ (the other patterns still apply to them)."""

# what a citation of an outside document looks like, and why it is one
OUTSIDE = {
    r"\bSPEC\b|SLD_SPEC": "a specification kept outside the repository",
    r"BASELINES\.md": "a list of measured baselines kept outside the repository",
    r"ARCHITECTURE\.md": "a layout note kept outside the repository",
    r"HELPER_RULES": "working notes kept outside the repository",
    SHARED: "a folder outside the repository",
    r"(?i)\bissues? #?\d+": "a numbered issue of a tracker the reader cannot see",
}


def searched_files():
    here = Path(__file__).resolve()
    for name in TOP_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for top in SEARCHED:
        for path in sorted((ROOT / top).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if not path.is_file() or path.suffix not in SUFFIXES or path == here:
                continue
            if SKIPPED_DIRS.intersection(parts) or parts[:2] == ("benchmarks", "results") and len(parts) > 3:
                continue
            yield path


def citations(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in OUTSIDE.items():
            if pattern == SHARED and str(path.relative_to(ROOT)) in CI_LAYOUT:
                continue
            if re.search(pattern, line):
                yield f"{path.relative_to(ROOT)}:{number}: {why}: {line.strip()[:120]}"


def test_the_patterns_catch_what_they_are_for():
    caught = [
        "see SPEC section 6", "from SLD_SPEC.md", "../shared/BASELINES.md", "ARCHITECTURE.md",
        "## Targets (issue 4)", "Issue 17's target", "issues #12",
    ]
    for line in caught:
        assert any(re.search(p, line) for p in OUTSIDE), line
    kept = [
        "importlib.util.spec_from_file_location", "the spec of a module", "docs/method.md, section 6",
        "shared_memory/ and shared weights", "github.com/megvii-research/mdistiller/issues",
        "Specific heat",
    ]
    for line in kept:
        assert not any(re.search(p, line) for p in OUTSIDE), line


def test_no_file_cites_documents_outside_the_repository():
    found = []
    for path in searched_files():
        found += citations(path)
    assert not found, (
        "these lines cite documents that are not in the repository; cite the paper "
        "(Limantoro et al., Multimedia Systems 2025, arXiv 2504.20108), an anchor's public "
        "repository, or docs/method.md (add what is missing there) instead:\n" + "\n".join(found)
    )


def test_method_page_is_there_and_cites_its_sources():
    text = (ROOT / "docs" / "method.md").read_text()
    for needed in ("arXiv 2504.20108", "github.com/StephenEkaputra/Swapped-Logit-Distillation",
                   "github.com/megvii-research/mdistiller", "github.com/Jin-Ying/Multi-Level-Logit-Distillation"):
        assert needed in text, f"docs/method.md no longer cites {needed}"


def layout_paths() -> list[str]:
    """The paths README's Layout block names: a line's first word, relative to the repository
    root, or, when indented, to the folder named by the last unindented line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    paths, folder = [], ""
    for line in block.splitlines():
        if not line.strip():
            continue
        word = line.split()[0]
        if line[0].isspace():
            paths.append(folder + word)
        else:
            folder = word if word.endswith("/") else ""
            paths.append(word)
    return paths


def test_layout_names_only_paths_that_exist():
    missing = [path for path in layout_paths() if not (ROOT / path).exists()]
    assert not missing, f"README's Layout section names paths that do not exist: {missing}; fix or remove those lines"


def tracked_top_level_folders() -> list[str]:
    """The repository's own top-level folders (from git: a checkout also holds a cloned
    mdistiller, run outputs and environments, which are not the repository's)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []  # not a git checkout (an unpacked sdist): only the modules are checked
    return sorted({line.split("/")[0] + "/" for line in listed.splitlines() if "/" in line and not line.startswith(".")})


def test_layout_names_every_module_and_top_level_folder():
    named = set(layout_paths())
    modules = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "slkd").rglob("*.py")
        if "__pycache__" not in path.parts and (path.name != "__init__.py" or path.parent == ROOT / "slkd")
    )
    unnamed = [module for module in modules if module not in named]
    for folder in tracked_top_level_folders():
        if not any(name.startswith(folder) for name in named):
            unnamed.append(folder)
    assert not unnamed, (
        f"README's Layout section does not name {unnamed}: add a line for each (indented under its "
        "folder's line, e.g. '  checkout.py   what it holds' under 'slkd/host/')"
    )
