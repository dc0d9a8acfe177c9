"""MkDocs hooks for bnlab's documentation (registered under `hooks:` in mkdocs.yml).

Parts of the site are generated at build time from the code and the committed results, so
they cannot go stale:

- `<!-- bnlab:config-reference -->` becomes the configuration reference: one table per config
  section with each field's key, type, default and the comment written beside it (or on the
  lines directly above it) in bnlab/runs/config.py; a section's text is its class docstring.
- `<!-- bnlab:config-groups -->` becomes a table per config group (data, optim, experiment,
  protocol): each option with the comment at the top of its YAML file.
- `<!-- bnlab:cli-reference -->` becomes the help of every `bnlab` command: the command table
  of bnlab/cli.py, each command's argparse help and `bnlab train --help` (Hydra's help,
  rendered from configs/hydra/help/bnlab.yaml).
- `<!-- bnlab:measures -->` becomes the table of the per-member measures of `bnlab tables`:
  each measure of the registry bnlab.analysis.tables.TABLE with what it reads and its definition.
- `<!-- bnlab:reproduction-times -->` becomes the table of results/tables/reproduction_times.csv
  (written by `bnlab reproduce`).

`PlainDocstrings`, a griffe extension (mkdocs.yml loads it for mkdocstrings), shows bnlab's
plain-text docstrings as written: mkdocstrings renders a docstring as Markdown, which would
turn `gamma*xhat + beta)*r` into emphasis and join aligned tables into one paragraph.

Files of results/ (CLAIMS.md, figures/, tables/) live outside docs/. They are added to the site
under the same paths, and a page's relative link to its repository path (`../results/...` from
docs/) is pointed at that copy: the link works on the repository host and in the site, and a
link to a file that does not exist is a broken link under `mkdocs build --strict`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import dataclasses
import importlib
import io
import os
import posixpath
import re
import textwrap
import tokenize
from pathlib import Path
from typing import NamedTuple

import griffe
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_SOURCE = REPO / "bnlab" / "runs" / "config.py"
HELP_CONFIG = REPO / "configs" / "hydra" / "help" / "bnlab.yaml"
TIMES_CSV = REPO / "results" / "tables" / "reproduction_times.csv"
MIRRORED = ("results/CLAIMS.md", "results/figures/*", "results/tables/*.csv")

CONFIG_MARKER = "<!-- bnlab:config-reference -->"
GROUPS_MARKER = "<!-- bnlab:config-groups -->"
CLI_MARKER = "<!-- bnlab:cli-reference -->"
TIMES_MARKER = "<!-- bnlab:reproduction-times -->"
MEASURES_MARKER = "<!-- bnlab:measures -->"


# --------------------------------------------------------------------------- config reference
class FieldDoc(NamedTuple):
    key: str  # the override path, e.g. model.bn_eps
    type: str  # the annotation as written
    default: str  # YAML spelling of the default
    doc: str  # the comment beside or above the field ('' when it has none)


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the comment is the whole line)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole = not tok.line[: tok.start[1]].strip()
            out[tok.start[0]] = (tok.string.lstrip("#").strip(), whole)
    return out


def schema_docs(source: str | None = None) -> tuple[dict, dict, dict]:
    """From the source of bnlab/runs/config.py: ({class: docstring}, {(class, field): comment},
    {(class, field): annotation}). A field's comment is its trailing comment on any of its
    lines, after the whole-line comments directly above it."""
    source = CONFIG_SOURCE.read_text() if source is None else source
    comments = _comments(source)
    class_docs, field_docs, types = {}, {}, {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        class_docs[node.name] = ast.get_docstring(node) or ""
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, line = [], stmt.lineno - 1
            while line in comments and comments[line][1]:
                above.insert(0, comments[line][0])
                line -= 1
            beside = [
                comments[n][0]
                for n in range(stmt.lineno, stmt.end_lineno + 1)
                if n in comments and not comments[n][1]
            ]
            field_docs[node.name, stmt.target.id] = " ".join(above + beside)
            types[node.name, stmt.target.id] = ast.unparse(stmt.annotation)
    return class_docs, field_docs, types


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value)).replace("e+", "e")
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _default_node(tree: ast.Module, cls: str, name: str) -> ast.expr | None:
    """The expression that gives field `name` of class `cls` its default, as written."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", None) == name:
                    value = stmt.value
                    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
                        kw = {k.arg: k.value for k in value.keywords}
                        value = kw.get("default_factory", kw.get("default"))
                        if isinstance(value, ast.Lambda):
                            value = value.body
                        elif isinstance(value, ast.Name) and "default_factory" in kw:
                            value = ast.Call(value, [], [])  # shown as the call: f()
                    return value
    return None


def _shown_default(source: str, tree: ast.Module, cls: str, name: str, value) -> str:
    """A default as the table shows it: a float as written in the source (1e-3), a value
    computed at run time (an environment variable) as its expression, else its YAML form."""
    node = _default_node(tree, cls, name)
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        return ast.get_source_segment(source, node)
    if node is not None and not isinstance(node, ast.Name):
        try:
            ast.literal_eval(node)
        except ValueError:
            return ast.unparse(node)
    return _yaml_value(value)


def config_sections() -> list[tuple[str, str, str, list[FieldDoc]]]:
    """(section key, class name, class docstring, fields) for RunConfig and every nested
    config, depth first. A nested config with one field (a probe's `Every`) is a row
    `key.field` of its parent's table, documented by the parent's comment."""
    from bnlab.runs import config

    source = CONFIG_SOURCE.read_text()
    tree = ast.parse(source)
    class_docs, field_docs, types = schema_docs(source)
    sections = []

    def walk(obj, prefix: str) -> None:
        cls = type(obj).__name__
        rows, nested = [], []
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            doc = field_docs.get((cls, f.name), "")
            if dataclasses.is_dataclass(value):
                inner = dataclasses.fields(value)
                if len(inner) == 1:
                    sub = type(value).__name__, inner[0].name
                    rows.append(
                        FieldDoc(
                            f"{key}.{inner[0].name}",
                            types.get(sub, ""),
                            _yaml_value(getattr(value, inner[0].name)),
                            doc or field_docs.get(sub, ""),
                        )
                    )
                else:
                    nested.append((value, f"{key}."))
                continue
            shown = _shown_default(source, tree, cls, f.name, value)
            rows.append(FieldDoc(key, types.get((cls, f.name), ""), shown, doc))
        sections.append((prefix.rstrip(".") or "(top level)", cls, class_docs.get(cls, ""), rows))
        for value, sub_prefix in nested:
            walk(value, sub_prefix)

    walk(config.RunConfig(), "")
    return sections


def _cell(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""  # a pipe inside a code span does not split the cell


def config_reference() -> str:
    """The configuration reference as Markdown: a section and a table per config class."""
    out = []
    for section, cls, doc, rows in config_sections():
        out += [f"### {section}", "", f"`{cls}`: {_cell(' '.join(doc.split()))}", ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for r in rows:
            out.append(
                f"| `{r.key}` | {_code(r.type)} | {_code(r.default)} | {_cell(r.doc) or '-'} |"
            )
        out.append("")
    return "\n".join(out)


def undocumented_fields() -> list[str]:
    """Override paths of the schema's fields that have no doc comment."""
    return [r.key for *_, rows in config_sections() for r in rows if not r.doc]


def _leading_comment(path: Path) -> str:
    """The comment block at the top of a YAML file, without `@package` and usage lines."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if "@package" in text or text.startswith("   "):  # usage lines are indented
            continue
        lines.append(text.strip())
    return " ".join(lines)


def config_groups() -> str:
    """A table per config group: its options, the default marked, each with the comment at
    the top of its YAML file."""
    from bnlab.runs.compose import CONFIG_DIR, group_options, groups

    conf = Path(CONFIG_DIR)
    defaults = {}
    for entry in yaml.safe_load((conf / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            defaults.update(entry)
    out = []
    for group in groups():
        default = defaults.get(group)
        out += [f"### {group}", ""]
        out.append(f"Default: `{default}`." if default else "Default: none.")
        out += ["", "| option | what it is |", "|---|---|"]
        for option in group_options(group):
            text = _leading_comment(conf / group / f"{option}.yaml")
            out.append(f"| `{option}` | {_cell(text) or '-'} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI reference
class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@contextlib.contextmanager
def _plain_help(columns: int = 100):
    """argparse help at a fixed width, without colour."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR", "PYTHON_COLORS")}
    os.environ.update(COLUMNS=str(columns), NO_COLOR="1", PYTHON_COLORS="0")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def command_parser(module: str) -> argparse.ArgumentParser:
    """The parser that `module.main(argv)` builds, caught at its parse_args call (nothing
    after it runs)."""

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        importlib.import_module(module).main([])
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError(f"{module}.main did not call ArgumentParser.parse_args")


def _help_text(parser: argparse.ArgumentParser) -> str:
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                text += "\n" + sub.format_help()
    return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip()


def train_help() -> str:
    """`bnlab train --help` as Hydra prints it (bnlab's help template, the config groups)."""
    from bnlab.runs.compose import group_options, groups

    conf = yaml.safe_load(HELP_CONFIG.read_text())
    group_lines = "\n".join(f"{g}: {', '.join(group_options(g))}" for g in groups())
    text = conf["template"]
    text = text.replace("${hydra.help.header}", conf["header"])
    text = text.replace("${hydra.help.footer}", conf["footer"])
    return text.replace("$APP_CONFIG_GROUPS", group_lines).replace("$$", "$").rstrip()


def cli_reference() -> str:
    """Every command of `bnlab --help` with its help, as Markdown."""
    from bnlab import cli

    out = ["```text", "$ bnlab --help", cli.USAGE, "```", ""]
    with _plain_help():
        for name, (module, summary) in cli.COMMANDS.items():
            text = train_help() if name == "train" else _help_text(command_parser(module))
            out += [f"## bnlab {name}", "", f"{summary[0].upper()}{summary[1:]}.", ""]
            out += ["```text", f"$ bnlab {name} --help", text, "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- measures
def measures_reference() -> str:
    """The per-member measures of bnlab.analysis.tables.TABLE as a Markdown table, in column
    order."""
    from bnlab.analysis.tables import MEASURES

    out = ["| measure | definition | reads |", "|---|---|---|"]
    for m in MEASURES:
        out.append(f"| `{m.name}` | {_cell(m.definition)} | {_cell(m.reads)} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- reproduction times
def reproduction_times() -> str:
    """results/tables/reproduction_times.csv as a Markdown table."""
    with TIMES_CSV.open() as f:
        rows = list(csv.DictReader(f))
    head = "| experiment | runs | member-steps | job-seconds | evaluating |"
    out = [head, "|---|---|---|---|---|"]
    for r in rows:
        if r["runs"] == "0":
            continue  # its runs are another experiment's (shared sweep folder)
        pct = f"{float(r['eval_pct']):.0f}%" if r["eval_pct"] else ""
        steps, job = f"{int(r['member_steps']):,}", f"{float(r['job_s']):,.0f}"
        out.append(f"| {r['experiment']} | {r['runs']} | {steps} | {job} | {pct} |")
    total = next((r for r in rows if r["experiment"] == "all" and r["wall_s"]), None)
    if total:
        out += ["", f"Wall time of the whole sweep: {float(total['wall_s']) / 60:.1f} minutes."]
    return "\n".join(out)


# --------------------------------------------------------------------------- docstrings
MARKDOWN_SPECIAL = re.compile(r"([\\*_\[\]#])")


def _escape_plain(text: str) -> str:
    return MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("<", "&lt;")


def _escape_text(line: str) -> str:
    """Escape what Markdown would interpret in a line of plain text, outside `code` spans."""
    parts = line.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code span in this line
        return _escape_plain(line).replace("`", "\\`")
    return "`".join(p if i % 2 else _escape_plain(p) for i, p in enumerate(parts))


def plain_to_markdown(text: str) -> str:
    """A plain-text docstring as Markdown that shows it as written: indented lines (aligned
    tables, layouts, usage lines) become code blocks, the rest is escaped text."""
    out, block = [], []

    def flush() -> None:
        if block:
            lines = textwrap.dedent("\n".join(block)).splitlines()
            out.extend(["", *(f"    {line}" for line in lines), ""])
            block.clear()

    for line in text.splitlines():
        if line.startswith("  ") and line.strip():
            block.append(line)
            continue
        flush()
        out.append(_escape_text(line))
    flush()
    return "\n".join(out).strip("\n")


class PlainDocstrings(griffe.Extension):
    """Griffe extension: every docstring through plain_to_markdown, once."""

    def on_object(self, *, obj, **kwargs) -> None:
        doc = obj.docstring
        if doc is not None and not getattr(doc, "bnlab_plain", False):
            doc.value = plain_to_markdown(doc.value)
            doc.bnlab_plain = True


# --------------------------------------------------------------------------- mkdocs events
def on_files(files, config):
    """Add results/CLAIMS.md, results/figures/* and results/tables/*.csv under their paths."""
    from mkdocs.structure.files import File

    for pattern in MIRRORED:
        for path in sorted(REPO.glob(pattern)):
            uri = path.relative_to(REPO).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


LINK = re.compile(r"(\]\()([^)\s]+)")


def _repository_link(page_uri: str, url: str) -> str:
    """A relative link from docs/PAGE to a mirrored repository path, pointed at the copy."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^/|^#", url):
        return url
    path, _, anchor = url.partition("#")
    target = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), path))
    if not target.startswith("../results/"):
        return url
    new = posixpath.relpath(target[3:], posixpath.dirname(page_uri) or ".")
    return f"{new}#{anchor}" if anchor else new


def on_page_markdown(markdown, page, config, files):
    generated = {
        CONFIG_MARKER: config_reference,
        GROUPS_MARKER: config_groups,
        CLI_MARKER: cli_reference,
        TIMES_MARKER: reproduction_times,
        MEASURES_MARKER: measures_reference,
    }
    for marker, make in generated.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    uri = page.file.src_uri
    return LINK.sub(lambda m: m.group(1) + _repository_link(uri, m.group(2)), markdown)
