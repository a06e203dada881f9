"""README.md is what CI runs and what a user can paste.

* ``.ci/run`` runs exactly the Quick start's commands, in order: the CPU torch the README names,
  the setup block, the test block -- no pin or flag the README does not show (issue 25: CI pinned
  a Triton no newcomer got, and was green on a path nobody takes).
* The Python API snippet runs as written, in a fresh working directory, and its outputs go under
  ``runs/`` (never where the README's ``fastncsn train`` example writes).
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _section(title):
    """The text of README's ``## title`` section (up to the next ``## ``)."""
    parts = re.split(r"^## " + re.escape(title) + r"\n", _readme(), maxsplit=1, flags=re.M)
    assert len(parts) == 2, f"README has no section '## {title}'"
    return parts[1].split("\n## ", 1)[0]


def _blocks(text, lang):
    """``(preceding paragraph, code)`` of every fenced block of ``lang``."""
    out = []
    for m in re.finditer(r"^```" + lang + r"\n(.*?)^```", text, re.S | re.M):
        before = text[:m.start()].rstrip("\n")
        para = before.split("\n\n")[-1]
        out.append((para, m.group(1)))
    return out


def _commands(code):
    """Shell commands of a block or script: no comments, blank lines, continuations joined."""
    code = code.replace("\\\n", " ")
    cmds = []
    for line in code.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            cmds.append(" ".join(line.split()))
    return cmds


def _quick_start_block(word):
    quick = _section("Quick start")
    found = [code for para, code in _blocks(quick, "bash") if para.lstrip().startswith(word)]
    assert len(found) == 1, f"README Quick start: expected one bash block after a paragraph starting {word!r}"
    return _commands(found[0])


def test_ci_runs_exactly_the_readme_commands():
    setup, tests = _quick_start_block("Setup"), _quick_start_block("Tests")
    assert setup and tests
    quick = _section("Quick start")
    torch_cmd = re.search(r"`(pip install torch==[^`]+)`", quick)
    assert torch_cmd, "README Quick start names no CPU torch install"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [c for c in _commands(f.read())
              if not c.startswith(("set ", "cd ", "export "))]
    assert ci == [torch_cmd.group(1)] + setup + tests, (
        ".ci/run must run the README's commands verbatim, in order:\n"
        f"  README: {[torch_cmd.group(1)] + setup + tests}\n  .ci/run: {ci}")


def test_commands_parser_sees_a_difference():
    """The comparison above can fail: a pin added to a command changes what it compares."""
    assert _commands("pip install torch==2.13.0 triton==3.7.1\n") != _commands("pip install torch==2.13.0\n")
    assert _commands("a \\\n  b  # note\n# c\n") == ["a b"]


def _python_snippet():
    api = _section("Python API")
    blocks = _blocks(api, "python")
    assert len(blocks) == 1, "README Python API: expected one python block"
    return blocks[0][1]


def test_snippet_writes_under_runs_and_not_where_the_train_example_does():
    snippet = _python_snippet()
    outs = re.findall(r"out_dir=\"([^\"]+)\"", snippet)
    assert outs and all(o.startswith("runs/") for o in outs), outs
    training = _section("Training")
    train_outs = re.findall(r"fastncsn train .*--out (\S+)", training)
    assert train_outs and not set(outs) & set(train_outs), (outs, train_outs)


@pytest.mark.slow
def test_python_snippet_runs(tmp_path):
    """The snippet as written (~45 s on one CPU thread): it must finish and leave its run under runs/.
    One OpenMP thread: beside the other xdist worker, torch's two threads took the snippet past 600 s
    (fresh-clone CI of 01a4e69, 2026-12-02; README's note on busy machines)."""
    snippet = _python_snippet() + "\nassert x.shape == (16, 1, 28, 28), x.shape\n"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = re.findall(r"out_dir=\"([^\"]+)\"", snippet)
    for o in outs:
        assert any(n.startswith("checkpoint_") for n in os.listdir(tmp_path / o)), os.listdir(tmp_path / o)
    assert sorted(os.listdir(tmp_path)) == ["runs"], os.listdir(tmp_path)


def test_readme_outputs_in_the_working_directory_are_ignored_by_git():
    """Every ``--out`` of the README's commands, and the folder ``fastncsn fid`` makes by default, is
    git-ignored: running the examples in a clone leaves ``git status`` clean."""
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    text = _readme()
    outs = set(re.findall(r"fastncsn [a-z-]+ [^\n`]*?--out ([^\s`]+)", text.replace("\\\n", " ")))
    outs = {o for o in outs if not o.startswith("docs/")}       # docs/results: committed experiment outputs
    assert {"samples.png", "runs/digits", "digits.stats"} <= outs, outs
    from fastncsn.checkpoint import BUNDLED_PATH
    from fastncsn.metrics.fid_run import default_out_dir
    fid_dir = os.path.relpath(default_out_dir(BUNDLED_PATH, 500, 0), os.getcwd())
    paths = sorted(outs) + [fid_dir + "/fid.json", "runs/api-digits/train_log.jsonl"]
    proc = subprocess.run(["git", "-C", ROOT, "check-ignore", "--no-index", "-v", "-n"] + paths,
                          capture_output=True, text=True)
    unmatched = [line.split("\t")[-1] for line in proc.stdout.splitlines() if line.startswith("::")]
    assert not unmatched, f"not in .gitignore: {unmatched}"
