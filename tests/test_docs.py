"""Every relative link and anchor in the Markdown files and the rule files resolves."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def check_target(source: Path, target: str, base: Path) -> str | None:
    if re.match(r"[a-z]+:", target) or target.startswith("//"):
        return None  # external: not checked here
    path, _, anchor = target.partition("#")
    resolved = (base / path).resolve() if path else source
    if not resolved.exists():
        return f"{shown(source)}: {target} -> {resolved} does not exist"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
        return f"{shown(source)}: {target} -> no heading #{anchor} in {resolved.name}"
    return None


def markdown_links(path: Path) -> list[str]:
    text, in_code, links = path.read_text(encoding="utf-8"), False, []
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code:
            links += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return links


MARKDOWN = tracked("*.md")


def test_there_are_docs_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/api.md", "docs/runbook.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_links_resolve(path):
    problems = [p for target in markdown_links(path) if (p := check_target(path, target, path.parent))]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in markdown_links(ROOT / "README.md")}
    orphans = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


@pytest.mark.parametrize("path", tracked("*rules*.yml", "tests/rules/*.yml"),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_rule_file_runbook_urls_resolve(path):
    """runbook_url annotations are relative to the workspace root."""
    problems, found = [], []
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"runbook_url:\s*\"?([^\"\s]+)", text):
        found.append(target)
        if problem := check_target(path, target, ROOT):
            problems.append(problem)
    assert not problems, "\n".join(problems)
    if path.name == "alert_rules.yml":
        alerts = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "alert" in r]
        assert len(found) == len(alerts), "every alert needs a runbook_url"


def test_a_broken_anchor_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Real section\n", encoding="utf-8")
    assert check_target(page, "page.md#real-section", tmp_path) is None
    assert "no heading" in check_target(page, "page.md#missing", tmp_path)
    assert "does not exist" in check_target(page, "other.md", tmp_path)
