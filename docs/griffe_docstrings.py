"""A griffe extension: our docstrings read well in ``help()``; this makes them read well on the
site.

The docstrings are written for the terminal and for doctest (``python -m pytest
--doctest-modules``), with a few reStructuredText habits. Before mkdocstrings parses them
(Google style, Markdown), each docstring is rewritten, never the source:

* a run of doctest lines (``>>>`` / ``...`` and the output up to the next blank line)
  outside a fence becomes a ``pycon`` fenced block;
* roles such as ``:class:`TripletLoss``` become inline code;
* a paragraph ending in ``::`` (a reST literal block) ends in ``:``; the indented block
  under it is then a Markdown code block;
* ``Example:`` followed by a blank line (the doctest is not indented under it, so that it
  reads as one block in ``help()``) becomes a bold heading;
* a ``Call arguments:`` section (Keras' name for the arguments of ``__call__``) becomes a
  list, since it is not one of the Google sections.

Loaded from mkdocs.yml (``extensions: [docs/griffe_docstrings.py]``); ``exclude_docs``
keeps this file out of the built site.
"""

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"(\S)::$")
_KERAS_SECTIONS = ("Call arguments:",)


def _fence_doctests(lines):
    out, in_fence, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_fence or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return out


def _keras_sections(lines):
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line in ("Example:", "Examples:") and (i + 1 == len(lines) or not lines[i + 1].strip()):
            out.append(f"**{line[:-1]}**")
            i += 1
            continue
        if line.strip() in _KERAS_SECTIONS and i + 1 < len(lines) and lines[i + 1].startswith(" "):
            out.append(f"**{line.strip()[:-1]}**")
            out.append("")
            i += 1
            while i < len(lines) and lines[i].startswith(" "):
                item = lines[i].strip()
                name, sep, rest = item.partition(": ")
                if sep and lines[i].startswith("    ") and not lines[i].startswith("     "):
                    out.append(f"- `{name}`: {rest}")
                else:  # a continuation line
                    out.append(f"  {item}")
                i += 1
            continue
        out.append(line)
        i += 1
    return out


def rewrite(text):
    """The Markdown form of one docstring (see the module docstring)."""
    text = _ROLE.sub(r"`\1`", text)
    lines = [_LITERAL.sub(r"\1:", line) for line in text.split("\n")]
    return "\n".join(_keras_sections(_fence_doctests(lines)))


class MarkdownDocstrings(griffe.Extension):
    """Rewrites every docstring once, before mkdocstrings parses it."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
