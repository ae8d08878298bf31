"""The documentation cites only what exists.

README.md and docs/*.md name repository paths, settings, ``make`` targets and
``salespulse`` commands in backticks, and link to each other. Each citation is
checked against the repository itself, so a renamed file, a removed setting or
command, or a section heading that changed fails here instead of misleading a
reader. Fenced code blocks are checked for commands only (their other text is
code). What counts as a setting: a field of ``salespulse.settings.Settings``
(field name = variable name) or a variable something in the repository reads
from the environment (Python, shell, Makefile, compose, Dockerfile,
``.env.example``); an UPPER_CASE name the code defines (a constant such as
``EVENT_WEIGHTS``) may be cited too.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
UPPER = re.compile(r"(?<![\w$./])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_(?=\*))(\*?)(?![\w(])")
MAKE = re.compile(r"(?:^|[\s(`])make\s+([a-z][\w-]*)")
CLI = re.compile(r"(?:^|[\s/(`])salespulse((?:\s+[a-z][\w|-]*){1,2})")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def prose_and_code(text: str) -> tuple[str, list[str]]:
    """The document without its fenced blocks, and the blocks."""
    return FENCE.sub("", text), FENCE.findall(text)


def expand_braces(token: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if not match:
        return [token]
    return list(itertools.chain.from_iterable(
        expand_braces(token[:match.start()] + part + token[match.end():]) for part in match.group(1).split(",")))


def cited_paths(prose: str, top_level: set[str]) -> set[str]:
    """Tokens of backtick spans that name something under a top-level entry of the repository."""
    found = set()
    for span in SPAN.findall(prose):
        for token in span.split():
            token = re.sub(r"(:\d+)?[,;:.)]*$", "", token).rstrip("/")
            head = token.split("/", 1)[0]
            if head not in top_level or ("/" not in token and "." not in head):
                continue
            if re.search(r"[<>…]|NNN|\.\.\.", token):  # a placeholder (sql/NNN_<name>.sql)
                continue
            found.update(expand_braces(token))
    return found


def compose_images() -> set[str]:
    """The images docker-compose.yml names (``salespulse/app`` looks like a path but is one)."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    return {name.split(":", 1)[0] for name in re.findall(r"^\s*image:\s*(\S+)", text, re.M)}


def exists(path: str, files: list[str]) -> bool:
    if re.fullmatch(r"sql/\d{3}", path):  # a migration by its number
        path += "_*.sql"
    if any(c in path for c in "*?["):
        return any(fnmatch.fnmatch(f, path) or fnmatch.fnmatch(f, path + "/*") for f in files)
    return (ROOT / path).exists()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    prose, _ = prose_and_code(doc.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", prose, re.M)}


def broken_links(doc: Path) -> list[str]:
    prose, _ = prose_and_code(doc.read_text(encoding="utf-8"))
    bad = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no such heading")
    return bad


def known_names(files: list[str]) -> set[str]:
    """Every setting and environment variable the repository reads, and every UPPER_CASE name it defines."""
    from salespulse.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    for rel in files:
        path = ROOT / rel
        if rel.endswith(".md") or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if rel.endswith(".py"):
            names.update(re.findall(r"""["']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)["']""", text))  # environ keys
            names.update(re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\s*[:=]", text))  # definitions, env=
        else:  # shell, Makefile, compose, Dockerfile, .env.example, configuration
            names.update(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))
            names.update(re.findall(r"^\s*(?:export\s+|ENV\s+)?([A-Z][A-Z0-9_]*)\s*[:?]?=", text, re.M))
            names.update(re.findall(r"^\s+([A-Z][A-Z0-9_]*):", text, re.M))  # compose environment keys
            names.update(re.findall(r"^\s+([A-Z][A-Z0-9_]*)=", text, re.M))  # Dockerfile ENV continuation lines
    return names


def cited_names(prose: str) -> set[str]:
    found = set()
    for span in SPAN.findall(prose):
        found.update(name + star for name, star in UPPER.findall(span))
    return found


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def cited_make(prose: str, blocks: list[str]) -> set[str]:
    found = {m for span in SPAN.findall(prose) for m in MAKE.findall(span)}
    found.update(m for block in blocks for m in MAKE.findall(block))
    return found


def cli_commands() -> dict[str, set[str]]:
    """``salespulse`` subcommands, each with its own subcommands (``stack up``)."""
    from salespulse.cli import build_parser

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return {name: set(choices(sub)) for name, sub in choices(build_parser()).items()}


def cited_cli(prose: str, blocks: list[str]) -> set[tuple[str, ...]]:
    texts = SPAN.findall(prose) + [line for block in blocks for line in block.splitlines()]
    found = set()
    for text in texts:
        for words in CLI.findall(text):
            words = words.split()
            for first in words[0].split("|"):
                found.add((first, *words[1:2]))
    return found


def unknown_cli(cited: set[tuple[str, ...]], commands: dict[str, set[str]]) -> list[str]:
    bad = []
    for words in cited:
        if words[0] not in commands:
            bad.append(" ".join(words))
        elif len(words) > 1 and commands[words[0]] and words[1].split("|")[0] not in commands[words[0]]:
            bad.append(" ".join(words))
    return bad


@pytest.fixture(scope="module")
def files() -> list[str]:
    return tracked_files()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_paths_exist(doc, files):
    top_level = {f.split("/", 1)[0] for f in files} - {".venv"}
    prose, _ = prose_and_code(doc.read_text(encoding="utf-8"))
    missing = sorted(p for p in cited_paths(prose, top_level) - compose_images() if not exists(p, files))
    assert missing == [], f"{doc.name} cites paths that do not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(doc):
    assert broken_links(doc) == [], f"{doc.name} links to missing files or headings"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_settings_exist(doc, files):
    known = known_names(files)
    prose, _ = prose_and_code(doc.read_text(encoding="utf-8"))
    unknown = sorted(n for n in cited_names(prose)
                     if not (any(k.startswith(n[:-1]) for k in known) if n.endswith("*") else n in known))
    assert unknown == [], f"{doc.name} cites settings nothing reads"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_make_targets_exist(doc):
    prose, blocks = prose_and_code(doc.read_text(encoding="utf-8"))
    assert sorted(cited_make(prose, blocks) - make_targets()) == [], f"{doc.name} cites missing make targets"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_cli_commands_exist(doc):
    prose, blocks = prose_and_code(doc.read_text(encoding="utf-8"))
    assert sorted(unknown_cli(cited_cli(prose, blocks), cli_commands())) == [], \
        f"{doc.name} cites salespulse commands that do not exist"


def test_the_checks_see_what_they_check():
    """The extractors find citations of each kind (a regex that matched nothing would pass everything)."""
    prose = ("See `salespulse/db.py` and `orchestration/reports/{ecommerce,restaurant}.py`, set "
             "`CONSUMER_BATCH_SIZE` or `FRESHNESS_*`, run `make run` then `salespulse stack up`.")
    top = {"salespulse", "orchestration"}
    assert cited_paths(prose, top) == {"salespulse/db.py", "orchestration/reports/ecommerce.py",
                                       "orchestration/reports/restaurant.py"}
    assert cited_names(prose) == {"CONSUMER_BATCH_SIZE", "FRESHNESS_*"}
    assert cited_make(prose, []) == {"run"}
    assert cited_cli(prose, []) == {("stack", "up")}
    cited = {("no-such-command",), ("stack", "no-such"), ("stack", "up"), ("status",)}
    assert sorted(unknown_cli(cited, cli_commands())) == ["no-such-command", "stack no-such"]
