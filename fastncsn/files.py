"""Files fastncsn reads and writes: reading without running code, atomic writes, one run per folder.

* :func:`safe_torch_load` -- ``torch.load(weights_only=True)`` admitting, besides tensors and plain
  Python data, only :data:`SAFE_GLOBALS` (the numpy arrays of the RNG states a training
  checkpoint keeps), scoped to the call; a file that holds any other Python object (whose
  unpickling could run code) raises :class:`UnsafeFileError` naming the file and the objects.
* :func:`load_numpy_pickle` -- a pickle of numpy arrays (e.g. the classic ``mnist.pkl.gz``) read by an
  unpickler that admits only the three globals numpy arrays need; any other global (a
  ``__reduce__`` that would run code) raises :class:`UnsafeFileError` before it is called.
* :func:`atomic_write` / :func:`atomic_write_text` -- temp file in the same folder, fsync,
  ``os.replace``: a reader, or a rerun after a kill at any moment, sees the old file or the
  complete new one; a failed write leaves the old file and no temp file.
* :class:`FolderLock` / :func:`lock_run_folder` -- one run per output folder: an exclusive
  ``fcntl.flock`` on ``FOLDER/.fastncsn.lock``, released by the kernel when the process ends in
  any way (SIGKILL included), so a lock never outlives its run.

torch is imported on first use (``fastncsn --help`` stays fast).
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

__all__ = ["UnsafeFileError", "FolderBusyError", "safe_globals", "safe_torch_load", "NUMPY_PICKLE_GLOBALS",
           "load_numpy_pickle", "atomic_write", "atomic_write_text", "LOCK_NAME", "FolderLock", "lock_run_folder"]


class UnsafeFileError(ValueError):
    """A file holds Python objects whose unpickling could run code; it was not loaded."""

    def __init__(self, message: str, path: str, objects: tuple):
        super().__init__(message)
        self.path, self.objects = path, objects


class FolderBusyError(ValueError):
    """Another process holds the lock of an output folder."""


# --------------------------------------------------------------------------- reading without running code

def safe_globals() -> list:
    """The non-tensor globals our own files need, for ``torch.serialization.safe_globals``.

    Training checkpoints keep ``numpy.random.get_state()`` (a ``uint32`` array) in ``rng``; numpy
    2 pickles its rebuild function as ``numpy._core.multiarray._reconstruct``, numpy 1 as
    ``numpy.core.multiarray._reconstruct`` (both names admitted, for checkpoints of either).
    Nothing else: the bundled assets, statistics files, FID shards and the reference NCSN /
    NCSNv2 checkpoints hold tensors and plain Python data only."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    out = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
           (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)   # numpy >= 1.25: a dtype's class is numpy.dtypes.UInt32DType
    if dtypes is not None:
        out.append(dtypes.UInt32DType)
    return out


_UNSAFE_MARKERS = ("Unsupported global", "Can only build")
_GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")
_OPERAND = re.compile(r"Unsupported operand (\d+)")


def _unsafe_objects(text: str) -> tuple:
    """The objects for which torch's weights-only unpickler refused a file (a global or a class outside
    the allowed set, or a real pickle opcode it does not run, e.g. ``INST``); ``()`` when it refused
    bytes that are no pickle at all (a damaged file)."""
    names = tuple(dict.fromkeys(a or b for a, b in _GLOBAL_NAME.findall(text)))
    if names or any(m in text for m in _UNSAFE_MARKERS):
        return names or ("unknown",)
    op = _OPERAND.search(text)
    if op is None:
        return ()
    import pickletools
    code = chr(int(op.group(1)))
    return tuple(f"pickle opcode {o.name}" for o in pickletools.opcodes if o.code == code)


def safe_torch_load(source, path: Optional[str] = None, arg: str = "path", mmap: bool = False):
    """``torch.load(source, map_location="cpu", weights_only=True)`` with :func:`safe_globals` admitted
    for this call only.

    Args:
        source: a path or a binary file object.
        path: the file's name for messages (default: ``source``).
        arg: the argument named at the start of the message.
        mmap: memory-map the tensors (zip-format files only).

    Raises:
        UnsafeFileError: the file holds other Python objects (``"{arg}: refuses to load {path}: it
            holds Python objects that could run code when read (...)"``); nothing of it ran.
        pickle.UnpicklingError: bytes that are no pickle (torch's own message, which advises loading
            the file unsafely, is not passed on); otherwise whatever ``torch.load`` raises for a
            corrupt or truncated file.
    """
    import pickle

    import torch
    path = os.fspath(path if path is not None else source)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        names = _unsafe_objects(text)
        if not names:  # (torch's message advises loading the file unsafely: never passed on)
            op = _OPERAND.search(text)
            detail = op.group(0) if op else "bad pickle data"
            raise pickle.UnpicklingError(f"not a file torch.load reads, or damaged ({detail})") from None
        what = "pickle data torch's safe loader cannot check, which could run code when read" \
            if names[0].startswith("pickle opcode") else "Python objects that could run code when read"
        raise UnsafeFileError(
            f"{arg}: refuses to load {path!r}: it holds {what} ({', '.join(names)}); fastncsn reads tensors and "
            "plain data only (torch.load weights_only=True): re-save the weights from code you trust",
            path, names) from None


#: the only globals :func:`load_numpy_pickle` admits: numpy's array rebuild function (numpy 1 and numpy 2
#: names), the array type and the dtype type -- what ``pickle.dumps(numpy_array)`` refers to
NUMPY_PICKLE_GLOBALS = (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                        ("numpy", "ndarray"), ("numpy", "dtype"))


def load_numpy_pickle(file, path: str, arg: str = "path", encoding: str = "latin1"):
    """Unpickle numpy arrays (in tuples, lists, dicts) from the binary file object ``file``, running no other code.

    ``pickle.Unpickler.find_class`` is the only way a pickle reaches a callable; here it returns only
    :data:`NUMPY_PICKLE_GLOBALS` and refuses every other name (``os.system``, ``builtins.eval``, ...) before
    anything is called. Persistent ids are refused too. ``encoding="latin1"`` reads Python-2 pickles of numpy
    arrays (their raw bytes are ``str`` there); Python 3 pickles at protocols 3 and 4 (the default) are read too
    (at protocol 2 Python 3 refers to ``_codecs.encode``, numpy at 5 to ``_frombuffer``: both refused). Object arrays are refused after loading (``numpy`` would only
    hold what the restricted unpickler built, but no dataset needs them).

    Raises:
        UnsafeFileError: ``"{arg}: refuses to load {path}: it holds Python objects that could run code ..."``.
        pickle.UnpicklingError, EOFError, ...: a damaged pickle.
    """
    import pickle

    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = {NUMPY_PICKLE_GLOBALS[0]: _reconstruct, NUMPY_PICKLE_GLOBALS[1]: _reconstruct,
               NUMPY_PICKLE_GLOBALS[2]: np.ndarray, NUMPY_PICKLE_GLOBALS[3]: np.dtype}

    def refuse(what: str):
        return UnsafeFileError(f"{arg}: refuses to load {path!r}: it holds Python objects that could run code when "
                               f"read ({what}); only numpy arrays are read from pickles", path, (what,))

    class _NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            obj = allowed.get((module, name))
            if obj is None:
                raise refuse(f"{module}.{name}")
            return obj

        def persistent_load(self, pid):
            raise refuse("a persistent id")

    out = _NumpyOnly(file, encoding=encoding).load()

    def check(obj):
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            raise refuse("an object array")
        if isinstance(obj, (tuple, list)):
            for item in obj:
                check(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                check(item)
    check(out)
    return out


# --------------------------------------------------------------------------- atomic writes

def atomic_write(path: str, write, suffix: str = "") -> None:
    """Call ``write(binary_file)`` on a temp file in ``path``'s directory, fsync, rename it to ``path``.

    A reader (or a rerun after a kill at any moment) sees the old file or the complete new one, never
    a partial file; when ``write`` raises, the old file is kept and the temp file removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), suffix=".txt")


# --------------------------------------------------------------------------- one run per folder

LOCK_NAME = ".fastncsn.lock"


class FolderLock:
    """An exclusive lock on ``folder`` for one run: ``fcntl.flock`` on ``folder/.fastncsn.lock``.

    The kernel drops the lock when its process ends, however it ends (SIGKILL included): a lock
    never outlives its run, and no stale lock needs cleaning up.  The file stays (removing it
    would let two processes lock two different files); it holds the pid of the last holder, which
    the refusal names.  Where ``fcntl`` does not exist (Windows) no lock is taken."""

    def __init__(self, folder: str, arg: str = "out_dir"):
        self.folder, self.arg, self.fd = os.fspath(folder), arg, None

    @property
    def path(self) -> str:
        return os.path.join(self.folder, LOCK_NAME)

    def acquire(self) -> "FolderLock":
        """Take the lock (creating ``folder``), or raise :class:`FolderBusyError` naming the holder's pid."""
        try:
            import fcntl
        except ImportError:  # no flock here: one run per folder is not enforced
            return self
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # (BlockingIOError: held by another open file, in this process or another)
            try:
                pid = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise FolderBusyError(f"{self.arg}: another run is using {self.folder!r} (pid {pid}); wait for it to "
                                  "end or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # (closing the only descriptor of the open file drops the flock)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def lock_run_folder(folder: str, arg: str = "out_dir", rank: int = 0, distributed: bool = False, group=None,
                    device=None) -> FolderLock:
    """Lock ``folder`` for the run of this process group: rank 0 takes :class:`FolderLock`; with
    ``distributed`` every rank learns the outcome (one ``all_reduce`` of a flag on ``device``) and all
    raise :class:`FolderBusyError` alike, before any work.  Returns the lock (held on rank 0 only;
    ``release()`` it when the run ends, on every rank)."""
    lock, err = FolderLock(folder, arg), None
    if rank == 0:
        try:
            lock.acquire()
        except FolderBusyError as exc:
            err = exc
    if distributed:
        import torch
        flag = torch.tensor([0 if err is None else 1], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, group=group)
        if int(flag.item()) and err is None:
            err = FolderBusyError(f"{arg}: another run is using {os.fspath(folder)!r} (rank 0 could not lock it); "
                                  "wait for it to end or choose another folder")
    if err is not None:
        raise err
    return lock
