"""Checked flags of the ``fastncsn`` command: one table of argparse ``type=`` callables and the parser.

Every value-taking flag of ``fastncsn COMMAND`` and ``fastncsn experiment NAME`` takes its
``type=`` from this table (or lists ``choices=``), so a bad value is refused while the command
line is parsed -- before anything is loaded, computed or written -- with one line on stderr::

    fastncsn COMMAND: error: --FLAG: expected WHAT, got 'TEXT'

and exit status 2 (:class:`Parser`; no usage text, no traceback).  Adding a checked flag is one
line, e.g. ``p.add_argument("--steps", type=flags.count, default=100, help="...")``; the test
that walks every flag with bad values (``tests/test_cli_flags.py``) then covers it.

The table:

=================== =====================================================================
``count``           an int >= 1 (``integer(k)``: an int >= k)
``index``           an int >= 0
``seed``            an int in [0, 2**63)
``threads``         a thread count >= 1
``positive``        a finite number > 0 (``real(...)``: a finite number in a range)
``rate``            a finite number in [0, 1)
``noise_level``     a finite sigma > 0 whose square is a normal float32 (the networks' dtype)
``device``          ``cpu``, ``cuda`` or ``cuda:N`` that exists here
``existing_file``   a file that exists (``existing_dir``: a folder; ``input_file(e)``: a file ending in e)
``output_file(k)``  a file name to write: its folder exists, it is not a folder, extension of kind k
``output_dir``      a folder to write into: an existing folder, or one that can be created
``dataset``         a dataset name of :mod:`fastncsn.data`, or ``folder:PATH`` of an existing folder
``matching(p, w)``  a text matching the regular expression ``p`` (``w``: what it is), e.g. a list item
=================== =====================================================================

Every int is also at most ``2**63 - 1`` (a value beyond int64 is refused, not overflowed later).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["Check", "FlagError", "Parser", "HelpFormatter", "integer", "real", "count", "index", "seed",
           "threads", "positive", "rate", "noise_level", "device", "existing_file", "existing_dir", "input_file",
           "output_file", "output_dir", "dataset", "number_or", "listing", "matching", "check_above", "OUTPUT_KINDS", "INT_MAX"]

#: the largest int a flag takes (int64: what torch and numpy hold without overflow)
INT_MAX = 2 ** 63 - 1


class FlagError(SystemExit):
    """A refused command line: the one-line error is printed; exit status 2."""

    def __init__(self):
        super().__init__(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every flag's help ends with its default when it has one.

    A flag whose default is ``None`` says in its help what happens without it (``default: the
    model's``); on/off switches (``store_true``) are off unless given."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("%(default)" in text or "default" in text.lower() or d is None or d is False
                or d is argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``PROG: error: --FLAG: ...``, exit status 2
    (:class:`FlagError`), and whose help lists every flag's default (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("argument "):         # argparse's "argument --n: ..." -> "--n: ..."
            message = message[len("argument "):]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise FlagError()


class Check:
    """An argparse ``type=``: ``text -> value``, or ``ArgumentTypeError`` "expected WHAT, got 'TEXT'".

    ``kind`` says what sort of value the flag takes (``"int"``, ``"float"``, ``"device"``,
    ``"existing_file"``, ``"existing_dir"``, ``"output_file"``, ``"output_dir"``, ``"dataset"``,
    ``"list"``); ``expected`` is the phrase of the error message (a str, or a function giving it);
    ``convert(text)`` returns the value or raises ``ValueError`` (its message, if any, is added in
    parentheses)."""

    def __init__(self, kind: str, expected, convert: Callable[[str], object], **info):
        self.kind, self._expected, self._convert, self.info = kind, expected, convert, info
        self.__name__ = kind

    @property
    def expected(self) -> str:
        return self._expected() if callable(self._expected) else self._expected

    def __call__(self, text: str):
        try:
            return self._convert(text)
        except (ValueError, TypeError, OverflowError) as exc:   # int("1.5"), float("x"): no detail to add
            why = f" ({exc})" if isinstance(exc, _Refused) and str(exc) else ""
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}{why}") from None

    def __repr__(self) -> str:
        return f"<flag check: {self.expected}>"


class _Refused(ValueError):
    """A value refused by a check, with why (shown in parentheses)."""


def _fail(why: str = ""):
    raise _Refused(why)


# ----------------------------------------------------------------------------- numbers

def integer(minimum: Optional[int] = None, maximum: int = INT_MAX, expected: Optional[str] = None) -> Check:
    """An int in ``[minimum, maximum]`` (decimal digits; ``1.5`` or ``1e3`` are not ints)."""
    lo = -INT_MAX - 1 if minimum is None else minimum
    expected = expected or ("an int" if minimum is None and maximum == INT_MAX else
                            f"an int >= {minimum}" if maximum == INT_MAX else f"an int in [{lo}, {maximum}]")

    def convert(text):
        v = int(text, 10)
        if not lo <= v <= maximum:
            _fail("beyond int64" if abs(v) > INT_MAX else "")
        return v
    return Check("int", expected, convert, minimum=lo, maximum=maximum)


def real(low: Optional[float] = None, high: Optional[float] = None, low_inclusive: bool = False,
         high_inclusive: bool = True, expected: Optional[str] = None) -> Check:
    """A finite float in the range ``low .. high`` (open or closed at each end as asked)."""
    if expected is None:
        lo = "" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        expected = "a finite number" + (f" in {lo}, {hi}" if low is not None and high is not None else
                                        f" {'>=' if low_inclusive else '>'} {low:g}" if low is not None else
                                        f" {'<=' if high_inclusive else '<'} {high:g}" if high is not None else "")

    def convert(text):
        v = float(text)
        if not math.isfinite(v):
            _fail()
        if low is not None and not (v >= low if low_inclusive else v > low):
            _fail()
        if high is not None and not (v <= high if high_inclusive else v < high):
            _fail()
        return v
    return Check("float", expected, convert, low=low, high=high)


def number_or(words: Sequence[str], number: Check) -> Check:
    """``number``, or one of the words ``words`` (returned as the text)."""
    def convert(text):
        return text if text in words else number._convert(text)
    return Check(number.kind, lambda: f"{number.expected} or {' or '.join(map(repr, words))}", convert,
                 **number.info)


def listing(item: Optional[Check], expected: str, choices: Optional[Sequence[str]] = None) -> Check:
    """A comma-separated list of at least one ``item`` (or, with ``choices``, of those names); a list.
    ``expected``: what one item is, in the plural (``"numbers > 0"``)."""
    expected = "a comma-separated list of " + (", ".join(choices) if choices else expected)

    def convert(text):
        parts = [t.strip() for t in text.split(",") if t.strip()]
        if not parts:
            _fail("empty")
        bad = [t for t in parts if t not in choices] if choices else []
        if bad:
            _fail(f"unknown: {', '.join(bad)}")
        return parts if choices else [item._convert(t) for t in parts]
    return Check("list", expected, convert, item=item, choices=choices)


def matching(pattern: str, expected: str) -> Check:
    """A text that matches the regular expression ``pattern`` whole (``expected``: what such a text is)."""
    import re
    rx = re.compile(pattern)

    def convert(text):
        if not rx.fullmatch(text.strip()):
            _fail()
        return text.strip()
    return Check("text", expected, convert, pattern=pattern)


count = integer(1)
index = integer(0, expected="an index >= 0")
seed = integer(0, INT_MAX, expected="an int in [0, 2**63)")
threads = integer(1, expected="a thread count >= 1")
positive = real(0.0)
rate = real(0.0, 1.0, low_inclusive=True, high_inclusive=False)
#: float32 is the networks' dtype: the DSM loss weights levels by sigma**2, so sigma**2 must be a normal float32
_F32_TINY, _F32_MAX = 1.1754943508222875e-38, 3.4028234663852886e+38
noise_level = real(math.sqrt(_F32_TINY), math.sqrt(_F32_MAX), low_inclusive=True,
                   expected=f"a noise level in [{math.sqrt(_F32_TINY):.3g}, {math.sqrt(_F32_MAX):.3g}] "
                            "(its square a normal float32)")


def check_above(value: float, flag: str, bound: float, bound_flag: str, what: str = "a noise level") -> None:
    """Two flags in order, after parsing: ``ValueError`` "FLAG: expected WHAT > BOUND_FLAG (bound), got value"
    unless ``value > bound`` (e.g. ``--sigma-1`` above ``--sigma-L``)."""
    if not value > bound:
        raise ValueError(f"{flag}: expected {what} > {bound_flag} ({bound:g}), got {value:g}")


# ----------------------------------------------------------------------------- devices, files, folders

def _device(text):
    from .devices import check_device
    try:
        check_device(text, "device")
    except ValueError as exc:           # "device: why" -> "(why)" unless why only repeats the expected forms
        why = str(exc).partition(": ")[2]
        _fail("" if why.startswith("expected") else why)
    return text


device = Check("device", "'cpu', 'cuda' or 'cuda:N' (a device present here)", _device)


def _existing_file(text):
    if os.path.isdir(text):
        _fail("a folder")
    if not os.path.isfile(text):
        _fail("no such file")
    return text


def _existing_dir(text):
    if not os.path.isdir(text):
        _fail("a file, not a folder" if os.path.exists(text) else "no such folder")
    return text


existing_file = Check("existing_file", "an existing file", _existing_file)
existing_dir = Check("existing_dir", "an existing folder", _existing_dir)


def input_file(*exts: str) -> Check:
    """An existing file whose name ends in one of ``exts``."""
    def convert(text):
        if not text.lower().endswith(exts):
            _fail(f"the name must end in {' or '.join(exts)}")
        return _existing_file(text)
    return Check("existing_file", f"an existing {' or '.join(exts)} file", convert, exts=exts)


def _image_extensions() -> tuple:
    """File extensions PIL can write (``.png``, ``.jpg``, ...)."""
    from PIL import Image
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE))


#: output kinds: (extensions, or None for any; a file name to show as an example); "image": what PIL writes
OUTPUT_KINDS = {"image": (None, "samples.png"), "gif": ((".gif",), "annealing.gif"),
                "tensor": ((".pt", ".npz"), "samples.pt"), "markdown": ((".md",), "report.md"),
                "any": ((), "stats.pt")}


def check_output_file(path: str, kind: str = "image") -> str:
    """``path`` can be written as ``kind`` (:data:`OUTPUT_KINDS`): its folder exists, it is not a folder,
    and its name ends in an extension of that kind; else ``ValueError`` saying why."""
    exts, example = OUTPUT_KINDS[kind]
    if kind == "image":
        exts = _image_extensions()
    if not path:
        _fail("empty")
    if os.path.isdir(path):
        _fail(f"a folder; expected a file name such as {example}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        _fail(f"folder {os.path.dirname(path) or parent!r} does not exist")
    if exts and not path.lower().endswith(exts):
        shown = ", ".join(e for e in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".webp") if e in exts) + ", ..." \
            if kind == "image" else " or ".join(exts)
        _fail(f"the name must end in {shown}")
    return path


def output_file(kind: str = "image") -> Check:
    """A file name to write, of ``kind`` (:data:`OUTPUT_KINDS`)."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    what = {"image": "an image file name", "gif": "a .gif file name", "tensor": "a .pt or .npz file name",
            "markdown": "a .md file name", "any": "a file name"}[kind]
    return Check("output_file", f"{what} in an existing folder", lambda t: check_output_file(t, kind), output=kind)


def check_output_dir(path: str) -> str:
    """``path`` is a folder that exists, or can be created (its nearest existing ancestor is a writable
    folder); else ``ValueError`` saying why.  Nothing is created."""
    if not path:
        _fail("empty")
    if os.path.exists(path) and not os.path.isdir(path):
        _fail("a file, not a folder")
    up = os.path.abspath(path)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        _fail(f"{up!r} is a file, so the folder cannot be created")
    if not os.access(up, os.W_OK | os.X_OK):
        _fail(f"{up!r} is not writable")
    return path


output_dir = Check("output_dir", "a folder that exists or can be created", check_output_dir)


def _dataset(text):
    from .data import DATASETS
    base, sep, path = text.partition(":")
    if base not in DATASETS or (sep and base != "folder"):
        _fail()
    if sep and not os.path.isdir(path):
        _fail(f"no such folder {path!r}")
    return text


def _datasets() -> str:
    from .data import DATASETS
    return f"one of {', '.join(d for d in DATASETS if d != 'folder')} or folder:PATH"


dataset = Check("dataset", _datasets, _dataset)
