"""Every Python example of the site (docs/**/*.md) and of README.md runs.

The blocks of one page run in order in one namespace, as a reader would paste them, in this
process (run once, on the JAX backend: `make test-tools`). A marker on the line before a
block changes that:

* ``<!-- docs-test: skip (why) -->``: not run (multi-host launch lines and the like; keep
  these few, and say which test covers the same code);
* ``<!-- docs-test: backend=NAME KEY=VALUE ... -->``: run in a fresh process with
  ``KERAS_BACKEND=NAME`` and the other variables set. All blocks with the same marker share
  that process (one per marker, to pay each framework's import once); each page keeps its
  own namespace there. ``backend=torch`` also gets the variables a
  one-process ``torchrun`` would set, so ``dist.init_process_group()`` works.

Relative links of README.md must point at files that exist (mkdocs checks the site's own).
"""

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Subprocesses: `pytest -m 'not slow'` skips them locally (CI runs them).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```\s*python\s*$")
# A block in another process may take this long (TensorFlow's import alone takes 5-10 s).
SUBPROCESS_TIMEOUT = 300


def python_blocks(path):
    """``(line, code, marker)`` for every ```python block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        marker = MARKER.match(lines[start - 2]) if start >= 2 else None
        blocks.append(
            (start + 1, textwrap.dedent("\n".join(body)), marker.group(1) if marker else "")
        )
        i += 1
    return blocks


def _page_id(path):
    return str(path.relative_to(ROOT))


def _groups(path):
    """The page's runnable blocks, grouped by marker (``""``: this process), in order."""
    groups = {}
    for line, code, marker in python_blocks(path):
        if marker.startswith("skip"):
            continue
        groups.setdefault(marker, []).append((line, code))
    return groups


def test_markers_are_known_and_few():
    skipped = []
    for path in PAGES:
        for line, _, marker in python_blocks(path):
            if marker.startswith("skip"):
                assert re.match(r"skip \(.+\)$", marker), f"{_page_id(path)}:{line}: say why"
                skipped.append(f"{_page_id(path)}:{line}")
            elif marker:
                assert marker.startswith("backend="), f"{_page_id(path)}:{line}: {marker!r}"
    assert len(skipped) <= 3, f"keep skipped examples few: {skipped}"


def _run_here(path, blocks):
    namespace = {"__name__": "__docs__"}
    cwd = os.getcwd()
    try:
        for line, code in blocks:
            try:
                exec(compile(code, f"{_page_id(path)}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(
                    f"{_page_id(path)}, block at line {line}: {error!r}"
                ) from error
    finally:
        os.chdir(cwd)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_elsewhere(pages, marker, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for item in marker.split():
        key, _, value = item.partition("=")
        env["KERAS_BACKEND" if key == "backend" else key] = value
    if env["KERAS_BACKEND"] == "torch":
        env.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    script = []
    for path in pages:
        script.append("namespace = {'__name__': '__docs__'}")
        for line, code in _groups(path)[marker]:
            where = f"{_page_id(path)}:{line}"
            script.append(f"print('--- block at {where}', flush=True)")
            script.append(f"exec(compile({code!r}, {where!r}, 'exec'), namespace)")
    runner = tmp_path / "blocks.py"
    runner.write_text("\n".join(script) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(runner)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"{marker} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


HERE = [path for path in PAGES if "" in _groups(path)]
ELSEWHERE = {}
for _path in PAGES:
    for _marker in _groups(_path):
        if _marker:
            ELSEWHERE.setdefault(_marker, []).append(_path)


@pytest.mark.parametrize("path", HERE, ids=[_page_id(p) for p in HERE])
def test_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    _run_here(path, _groups(path)[""])


@pytest.mark.parametrize("marker", sorted(ELSEWHERE))
def test_examples_run_in_their_own_process(marker, tmp_path):
    _run_elsewhere(ELSEWHERE[marker], marker, tmp_path)


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to a missing {target}"
