"""The README stays a five-minute read, and no link in it or in docs/ leads nowhere.

A newcomer reads the README's first screen and runs its two commands (CI and test_demo.py rely on them as
written); everything else lives in docs/, so a broken relative link or an anchor whose heading was renamed is
a dead end. Anchors follow GitHub's slugs: lowercase, punctuation other than '-' and '_' dropped, each space
a '-', and '-1', '-2' ... for repeated headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = 'python3 -m venv .venv && .venv/bin/pip install -e ".[train,edge]" && .venv/bin/vibrawatch demo --out runs/demo'
TESTS = "bash tests/run.sh"
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).+?\1")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks; a fence closes only on its own character, as long or longer."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not line.strip()[len(m.group(1)):].strip():
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup and punctuation go, spaces become '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image that is not a URL, outside code."""
    links = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        text = INLINE_CODE.sub("", line)
        for m in [*LINK.finditer(text), *IMAGE.finditer(text)]:
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            links.append((number, target))
    return links


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; keep it under 250 (move detail into docs/)"
    first = [line.strip() for line in lines[:40]]
    assert DEMO in first, "README.md: the demo command, verbatim, must stand on its own line in the first 40"
    assert TESTS in first, "README.md: `bash tests/run.sh` must stand on its own line in the first 40"


def test_the_benchmark_markers_are_in_docs_benchmarks_once() -> None:
    """bench/detection.py rewrites what is between them: exactly one pair, in order, in benchmarks.md only."""
    begin = "<!-- bench/detection.py: generality table (begin) -->"
    end = "<!-- bench/detection.py: generality table (end) -->"
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)
    assert begin not in README.read_text(encoding="utf-8")


def test_slug_follows_githubs_rules() -> None:
    assert slug("Raw samples in (source `kind = \"mqtt\"`)") == "raw-samples-in-source-kind--mqtt"
    assert slug("6. Commissioning: this machine's healthy state") == "6-commissioning-this-machines-healthy-state"
    assert slug("Detection (`bench/detection.py`)") == "detection-benchdetectionpy"
    assert slug("keep_under-score") == "keep_under-score"


def test_the_link_checker_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# T\n\n[a](x.md) `[b](y.md)` ![c](img.png)\n\n````md\n```\n[d](z.md)\n```\n````\n"
                    "[e](https://example.org) [f](#t)\n")
    assert [t for _, t in relative_links(page)] == ["x.md", "img.png", "#t"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_somewhere(path: Path) -> None:
    broken = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            broken.append(f"{where}: no heading with that anchor in {dest.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)
