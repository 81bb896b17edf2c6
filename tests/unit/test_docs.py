"""The docs point at things that exist: every relative link (and its anchor),
every file path a page names. The README stays one screen of scrolling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: A path into the tree, as pages name them (in backticks or in prose).
PATH = re.compile(
    r"(?<![\w./-])((?:pipeline|tests|scripts|deploy|schemas|examples|docs|\.ci)/[\w./-]*[\w/])"
)
#: Paths a page names that a command creates (git-ignored, never in a clone).
CREATED = ("deploy/secrets", "bench-results")
README_MAX_LINES = 250


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _without_git_revisions(text: str) -> str:
    """A path at an older commit (`git checkout REV -- PATH`) need not exist now."""
    return re.sub(r"git (?:checkout|show) \S+ (?:-- )?\S+", "", text)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_reaches_a_file_and_its_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {where.relative_to(ROOT)}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_path_a_page_names_exists(page: Path) -> None:
    missing = sorted(
        {
            path
            for path in PATH.findall(_without_git_revisions(page.read_text()))
            if not path.startswith(CREATED) and not (ROOT / path).exists()
        }
    )
    assert missing == []


def test_the_readme_fits_one_screen_of_scrolling_and_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= README_MAX_LINES
    unlinked = [_name(p) for p in PAGES if p.name != "README.md" and f"({_name(p)})" not in readme]
    assert unlinked == []


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=_name)
def test_every_page_says_which_tests_prove_it(page: Path) -> None:
    text = page.read_text()
    assert "\n## What proves it\n" in text
    proofs = text.split("\n## What proves it\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"`tests/[\w/.-]+`|`claude-pipeline (bench|chaos)", proofs)
