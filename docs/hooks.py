"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

Two things a plain MkDocs build cannot do:

- The CLI reference is generated at build time from ``lth_sparse.cli.build_parser()``: the page ``cli.md`` holds
  the marker ``CLI_HELP_MARKER``, replaced by the ``--help`` of the command and of every subcommand, so the
  reference cannot drift from the code.
- Pages link files of the repository that live outside ``docs/`` (the plots, ``summary.json`` and ``run.sh`` of
  ``results/<run>/``, ``bench/results/*.json``) by their path in the repository, as GitHub resolves it
  (``../../results/plant/run/plots/plant_circle_depth5.png`` from ``docs/pipelines/plant.md``). MkDocs serves only
  files under ``docs_dir``; rather than committing copies, each linked file is added to the site under its
  repository path and the link rewritten to it. A link to a file that does not exist is left as written, so that
  ``mkdocs build --strict`` fails on it.

And one thing the API reference needs: the docstrings cross-reference in Sphinx's roles (``:func:`name```), which
Markdown does not know; the role names are dropped from the rendered pages, leaving the name as code.
"""

from __future__ import annotations

import os
import posixpath
import re
from contextlib import contextmanager
from pathlib import Path

from mkdocs.structure.files import File

CLI_HELP_MARKER = "<!-- the --help of every subcommand, generated at build time -->"
HELP_WIDTH = "100"

# A Sphinx role before a code span, as Markdown renders it: :func:<code>name</code> (~ shows the last component).
SPHINX_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj):<code>(~?)([^<]*)</code>")

# An inline Markdown link or image: [text](target) or ![alt](target "title").
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")


@contextmanager
def terminal_width(columns: str):
    """argparse wraps help at the terminal's width (``COLUMNS``): a fixed one makes the page the same everywhere."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = columns
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def cli_reference() -> str:
    """The ``--help`` of ``lth-sparse`` and of each of its subcommands, in the parser's order, as Markdown."""
    from lth_sparse.cli import build_parser

    with terminal_width(HELP_WIDTH):
        parser = build_parser()
        # argparse has no public accessor for its subparsers: the one action whose choices are parsers holds them.
        subcommands = next(action.choices for action in parser._actions if isinstance(action.choices, dict))
        sections = [f"## `lth-sparse`\n\n```text\n{parser.format_help()}```\n"]
        for name, subparser in subcommands.items():
            sections.append(f"## `lth-sparse {name}`\n\n```text\n{subparser.format_help()}```\n")
    return "\n".join(sections)


def repository_link(target: str, page_src_uri: str, docs: str, root: Path) -> str | None:
    """The repository path of a relative link that leaves ``docs/`` for an existing file, else None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None  # a URL, an anchor on the page, or a site-absolute path
    path = target.split("#", 1)[0]
    resolved = posixpath.normpath(posixpath.join(docs, posixpath.dirname(page_src_uri), path))
    if resolved == docs or resolved.startswith((docs + "/", "../")) or resolved.endswith(".md"):
        return None  # a page of the site, outside the repository, or Markdown that MkDocs would take for a page
    if not (root / resolved).is_file():
        return None
    return resolved


def on_page_markdown(markdown, page, config, files):
    if CLI_HELP_MARKER in markdown:
        markdown = markdown.replace(CLI_HELP_MARKER, cli_reference())
    root = Path(config["config_file_path"]).resolve().parent
    docs = Path(config["docs_dir"]).resolve().relative_to(root).as_posix()
    page_dir = posixpath.dirname(page.file.src_uri) or "."

    def into_the_site(match: re.Match) -> str:
        before, target, after = match.groups()
        resolved = repository_link(target, page.file.src_uri, docs, root)
        if resolved is None:
            return match.group(0)
        if files.get_file_from_path(resolved) is None:
            files.append(
                File(
                    resolved,
                    src_dir=str(root),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
        fragment = target[len(target.split("#", 1)[0]) :]
        return f"{before}{posixpath.relpath(resolved, page_dir)}{fragment}{after}"

    return LINK.sub(into_the_site, markdown)


def on_page_content(html, page, config, files):
    def as_code(match: re.Match) -> str:
        tilde, name = match.groups()
        return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"

    return SPHINX_ROLE.sub(as_code, html)
