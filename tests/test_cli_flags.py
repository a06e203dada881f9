"""Every flag of every command, from the parsers themselves: bad values refused while parsing (one line
naming the flag, exit 2, no traceback, nothing written), every ``--help`` complete.

A new flag is covered without editing this file: the walk iterates ``parser._actions`` of every
subcommand and experiment, and derives its bad values from the flag's check
(:mod:`fastncsn.flags`) or its ``choices``.  A flag that legitimately takes one of the bad values
is listed in :data:`ACCEPTED` with the reason.
"""
import argparse
import importlib
import os

import pytest
import torch

from fastncsn import flags
from fastncsn.cli import _ARG_FLAGS, _COMMAND_ARG_FLAGS, build_parser, main
from fastncsn.experiments.cli import EXPERIMENTS
from test_cli import tiny_ckpt  # noqa: F401  (the tiny checkpoint fixture)

#: (command or None for every command, flag) -> {value: why a bad-looking value is a legitimate one}
ACCEPTED = {
    (None, "--seed"): {"0": "0 is a seed"},
    (None, "--from-digits"): {"0": "index 0 is the first embedded digit"},
    (None, "--ema"): {"0": "0 turns the EMA off"},
    (None, "--ema-rate"): {"0": "0 turns the EMA off"},
    (None, "--eps"): {"1e30": "any finite step size > 0 is a step size; one far too large is reported as "
                              "divergence after level 0, nothing written (tests/test_failures.py)"},
    (None, "--lr"): {"1e30": "any finite learning rate > 0 is legitimate; a run that diverges stops with exit 3 "
                             "and keeps its last finite checkpoint"},
    ("schedule", "--sigma-1"): {"1e30": "schedule computes in float64: any level whose square is a normal "
                                        "float64 is printed"},
    ("schedule", "--sigma-L"): {"1e30": "as --sigma-1 (the pair's order is checked after parsing)"},
}

INTS = ["nan", "inf", "-inf", "-3", "0", "1.5", "1e30", str(10 ** 30), "abc", ""]
FLOATS = ["nan", "inf", "-inf", "-3", "0", "1e30", "1e400", "abc", ""]


def _parsers():
    """``(prefix, parser)`` of every command and every experiment (``prefix``: the words before the flags)."""
    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    out = [((name,), p) for name, p in sub.choices.items()]
    for name, (module, _) in EXPERIMENTS.items():
        out.append((("experiment", name), importlib.import_module(f"fastncsn.experiments.{module}").build_parser()))
    return out


PARSERS = _parsers()


def _value_flags(parser):
    return [a for a in parser._actions if a.option_strings and a.nargs != 0]


def _bad_values(action, tmp) -> list:
    """The bad values to try for ``action``, from its check or its choices."""
    if action.choices is not None:
        return ["abc", ""]
    check = action.type
    assert isinstance(check, flags.Check), f"{action.option_strings}: not checked by a fastncsn.flags type"
    kind = check.kind
    if kind == "int":
        return INTS
    if kind == "float":
        return FLOATS
    if kind == "list":
        return ["", ",", "abc"] + ([] if check.info["choices"] else ["1,nan", "1,-3", "inf"])
    if kind == "device":
        return ["gpu7", "cuda:x", "nan", ""] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    missing = os.path.join(tmp, "missing", "folder")
    regular = os.path.join(tmp, "a_file.txt")
    if kind == "existing_file":
        return [missing + ".pt", tmp, ""]
    if kind == "existing_dir":
        return [missing, regular, ""]
    if kind == "output_file":
        exts = flags.OUTPUT_KINDS[check.info["output"]][0]
        name = "x" + (".png" if exts is None else exts[0] if exts else ".out")
        wrong = [os.path.join(tmp, "x.unknownext")] if exts is None or exts else []
        return [os.path.join(missing, name), tmp, ""] + wrong
    if kind == "output_dir":
        return [os.path.join(regular, "sub"), regular, ""]
    if kind == "dataset":
        return ["abc", "folder:" + missing, "digits:x", ""]
    raise AssertionError(f"{action.option_strings}: no bad values known for kind {kind!r}; add them here")


def _accepted(prefix, flag) -> dict:
    return dict(ACCEPTED.get((None, flag), {}), **ACCEPTED.get((prefix[-1], flag), {}))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory (outputs with default names would land here) and a regular file."""
    (tmp_path / "a_file.txt").write_text("not a folder")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


@pytest.mark.parametrize("prefix, parser", PARSERS, ids=[" ".join(p) for p, _ in PARSERS])
def test_every_flag_refuses_bad_values_in_one_line(prefix, parser, workdir, capsys):
    prog = "fastncsn " + " ".join(prefix)
    assert parser.prog == prog
    tried = 0
    for action in _value_flags(parser):
        flag = action.option_strings[0]
        ok = _accepted(prefix, flag)
        for value in _bad_values(action, str(workdir)):
            if value in ok:
                continue
            with pytest.raises(flags.FlagError) as e:   # refused while parsing: nothing ran
                parser.parse_args([f"{flag}={value}"])
            assert e.value.code == 2
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert len(lines) == 1 and not out, (flag, value, err)
            assert lines[0].startswith(f"{prog}: error: {'/'.join(action.option_strings)}: "), (flag, value, err)
            assert "expected" in lines[0] or "invalid choice" in lines[0], (flag, value, err)
            assert "Traceback" not in err
            tried += 1
    assert tried or not _value_flags(parser)
    assert os.listdir(workdir / "cwd") == [] and sorted(os.listdir(workdir)) == ["a_file.txt", "cwd"]


@pytest.mark.parametrize("key", list(ACCEPTED), ids=[f"{c or '*'} {f}" for c, f in ACCEPTED])
def test_listed_values_are_accepted_and_the_flags_exist(key):
    command, flag = key
    found = 0
    for prefix, parser in PARSERS:
        if command is not None and prefix[-1] != command or flag not in parser._option_string_actions:
            continue
        action = parser._option_string_actions[flag]
        for value in ACCEPTED[key]:
            action.type(value)          # the flag's check takes it
        found += 1
    assert found, f"{key}: no such flag (remove it from ACCEPTED)"


def test_main_reports_a_bad_flag_in_one_line_exit_2(capsys):
    """Through ``main`` (as the console script runs it): exit status 2, one line, for a command and an experiment."""
    for argv, start in [(["sample", "--n", "0"], "fastncsn sample: error: --n: expected an int >= 1, got '0'"),
                        (["train", "--seed", "1e20"], "fastncsn train: error: --seed: expected an int in [0, 2**63)"),
                        (["experiment", "score-norm", "--threads", "-3"],
                         "fastncsn experiment score-norm: error: --threads: expected a thread count >= 1, got '-3'"),
                        (["experiment", "nope"], "fastncsn experiment: error: NAME: invalid choice")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(start) and len(err.strip().splitlines()) == 1, (argv, err)


@pytest.mark.parametrize("prefix, parser", PARSERS, ids=[" ".join(p) for p, _ in PARSERS])
def test_every_help_is_complete(prefix, parser):
    """Help text for every action, a default or what happens without the flag, choices listed, and the usage
    line a user types (``fastncsn experiment NAME``, not ``python -m ...``)."""
    text = parser.format_help()
    assert text.startswith("usage: fastncsn " + " ".join(prefix)), text[:80]
    assert "python -m" not in text
    one_of = {id(a) for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions}
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{prefix} {name}: no help text"
        if action.option_strings and action.nargs != 0 and not action.required and id(action) not in one_of:
            shown = parser.formatter_class(parser.prog)._get_help_string(action)
            assert "default" in shown.lower(), f"{prefix} {name}: help says no default"
        for choice in action.choices or ():
            if not isinstance(action, argparse._SubParsersAction):
                assert str(choice) in text, f"{prefix} {name}: choice {choice!r} not listed"


def test_inpaint_help_lists_mask_kinds_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["inpaint", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "{right_half,left_half,bottom_half,center}" in out and "(default: right_half)" in out
    assert "(default: inpainting.png)" in out and "(default: 8)" in out


def test_library_argument_names_map_to_existing_flags():
    """The table that renames a library error's argument (``path:``, ``L:``, ``ngf:``, ``root:``, ``mu2``) names
    flags the commands have."""
    every = {f for _, p in PARSERS for f in p._option_string_actions}
    assert set(_ARG_FLAGS.values()) <= every, set(_ARG_FLAGS.values()) - every
    by_command = {prefix[0]: p for prefix, p in PARSERS if len(prefix) == 1}
    for command, table in _COMMAND_ARG_FLAGS.items():
        for flag in table.values():
            assert flag in by_command[command]._option_string_actions, (command, flag)
    for name in ("path", "L", "ngf", "sigma_1", "root", "mu2"):
        assert name in _ARG_FLAGS or any(name in t for t in _COMMAND_ARG_FLAGS.values()), name


def test_dataset_check_agrees_with_the_datasets():
    from fastncsn.data import DATASETS
    for name in DATASETS:
        assert flags.dataset(name) == name
    with pytest.raises(argparse.ArgumentTypeError, match="expected one of digits, mnist"):
        flags.dataset("imagenet")


# ----------------------------------------------------------------------------- checks needing the model or several flags

@pytest.fixture
def no_sampling(monkeypatch):
    import fastncsn.sampling.api as api
    monkeypatch.setattr(api, "sample", lambda *a, **k: pytest.fail("sampled before the check"))


def _one_line(argv, capsys, start):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith(start) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra", [["--out", "s.png"], ["--strip", "strip.png"], ["--gif", "a.gif"]])
def test_picture_too_large_for_the_scale_is_refused_before_sampling(tiny_ckpt, workdir, capsys, no_sampling, extra):
    """A huge --scale: a MemoryError after sampling before; now one line before any sampling (issue 24)."""
    argv = ["sample", "--checkpoint", tiny_ckpt, "--n", "4", "--scale", "4000", "--quiet"] + extra
    err = _one_line(argv, capsys, "fastncsn sample: error: --scale: ")
    assert "MAX_IMAGE_PIXELS" in err and "lower --scale or --n" in err
    _one_line(["inpaint", "--checkpoint", tiny_ckpt, "--scale", "4000", "--quiet"], capsys,
              "fastncsn inpaint: error: --scale: ")
    assert os.listdir(workdir / "cwd") == []


def test_train_batch_larger_than_the_dataset_is_refused_before_any_step(workdir, capsys):
    """--batch-size far above the dataset was killed at 22 GB; a batch above it is refused (issue 24)."""
    from fastncsn.training import train
    err = _one_line(["train", "--out", str(workdir / "run"), "--batch-size", "1798", "--steps", "1", "--ngf", "4",
                     "--num-levels", "2", "--quiet"], capsys, "fastncsn train: error: --batch-size: ")
    assert "at most the dataset's 1797 images, got 1798" in err
    assert not (workdir / "run").exists()                                       # not even an empty folder
    with pytest.raises(ValueError, match="batch_size: expected at most the dataset's 1797 images"):
        train(data="digits", steps=1, batch_size=10 ** 6, ngf=4, num_levels=2, progress=False)


def test_noise_levels_in_order_and_library_names_become_flags(tiny_ckpt, workdir, capsys, tmp_path):
    _one_line(["train", "--out", str(workdir / "run"), "--sigma-1", "0.001", "--quiet"], capsys,
              "fastncsn train: error: --sigma-1: expected a noise level > --sigma-L (0.01), got 0.001")
    _one_line(["schedule", "--sigma-1", "0.001"], capsys,
              "fastncsn schedule: error: --sigma-1: expected a noise level > --sigma-L (0.01), got 0.001")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line(["train", "--out", str(workdir / "run"), "--data", f"folder:{empty}", "--quiet"], capsys,
              "fastncsn train: error: --data: no image files")                  # was "root: ..."
    bad = tmp_path / "bad.pt"
    bad.write_bytes(open(tiny_ckpt, "rb").read()[:200])
    _one_line(["sample", "--checkpoint", str(bad), "--quiet"], capsys, "fastncsn sample: error: --checkpoint: ")
    _one_line(["inpaint", "--checkpoint", str(bad), "--quiet"], capsys, "fastncsn inpaint: error: --checkpoint: ")
    assert not (workdir / "run").exists() or not os.listdir(workdir / "run")


def test_schedule_numbers_levels_from_zero(capsys):
    """The glossary's convention: levels 0..L-1, largest sigma first (schedule printed 1..L before)."""
    assert main(["schedule", "--num-levels", "4"]) == 0
    out = capsys.readouterr().out
    assert "levels i = 0..3" in out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]
    assert [r[0] for r in rows[:4]] == ["0", "1", "2", "3"] and float(rows[0][1]) == 1.0
