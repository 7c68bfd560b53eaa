"""A griffe extension for the documentation site (mkdocs.yml): rbp's docstrings are written in
reStructuredText habits; this turns the few that Markdown would garble into Markdown.

* ``:func:`x```, ``:class:`x``` and the other Sphinx roles become code, `x`;
* a paragraph ending in ``::`` ends in ``:`` (its indented block is a code block either way);
* doctest lines (``>>> ...``) are fenced as Python code instead of becoming nested block quotes;
* a ``*`` between letters outside code (``C*H*W``) stays a star instead of starting emphasis;
* a definition list (a term on its own line, its definition indented below it) becomes a bullet
  list instead of one run-on paragraph.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc|const|ref|py:\w+):`~?([^`]+)`")


def _stars(text: str) -> str:
    parts = re.split(r"(`+[^`]*`+)", text)          # odd parts are code spans
    return "".join(p if i % 2 else re.sub(r"(?<=\w)\*(?=\w)", r"\\*", p) for i, p in enumerate(parts))


def _definitions(text: str) -> str:
    lines, out, i, after = text.split("\n"), [], 0, False
    while i < len(lines):
        line = lines[i]
        term = (line.strip() and not line[0].isspace() and not line.rstrip().endswith(":")
                and (i == 0 or after or not lines[i - 1].strip() or re.fullmatch(r"[-=~]+", lines[i - 1].strip()))
                and i + 1 < len(lines)
                and lines[i + 1].startswith("    ") and lines[i + 1].strip())
        after = False
        if not term:
            out.append(line)
            i += 1
            continue
        j, body = i + 1, []
        while j < len(lines) and lines[j].startswith("    ") and lines[j].strip():
            body.append(lines[j].strip())
            j += 1
        out.append(f"- {line.strip()}: " + " ".join(body))
        i, after = j, True
    return "\n".join(out)


def markdown(text: str) -> str:
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = _definitions(text)
    text = re.sub(r"(\S)::\n", r"\1:\n", text)
    out, fenced = [], False
    for line in text.split("\n"):
        doctest = line.lstrip().startswith((">>>", "... ")) or line.strip() in (">>>", "...")
        if doctest and not fenced:
            indent = line[:len(line) - len(line.lstrip())]
            if out and out[-1].strip():
                out.append("")
            out.append(indent + "```python")
            fenced = True
        elif fenced and not doctest:
            out.append(indent + "```")
            fenced = False
        out.append(line if doctest or line.startswith((" " * 4, "\t")) else _stars(line))
    if fenced:
        out.append(indent + "```")
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
