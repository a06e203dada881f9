"""Provenance of a benchmark record: which commit it measured, whether the tree was that commit, and on what.

Every record the perf lab brings back carries :func:`stamp`: ``commit``, ``tree_clean`` (the tree that
ran is exactly that commit: no modified tracked file, no untracked file that git would see),
``commit_source`` (how that was established) and ``versions`` (device, driver, torch, Triton, CUDA,
cuDNN, Python; the L2 size that the op benchmarks rotate their inputs against).

The GPU machine receives a copy of the working tree *without* ``.git``, so the commit cannot be read
there.  Before a GPU call, on the machine that has the checkout::

    python3 -m benchmarks.provenance prepare          # writes .lab/commit.json (ignored by git)

and the call carries ``.lab`` (the device tool's ``carry``).  The file holds the commit, the clean flag
and the git blob hash of every tracked file; on the GPU machine :func:`git_info` re-hashes the files
that arrived and accepts the commit only if every hash matches (a stale file, written before a later
commit or edit, is caught there instead of stamping records with the wrong commit).  The lab
(``scripts/gpu_lab.py``) refuses to run when :func:`git_info` finds no commit.

Order of the sources: ``git`` (a checkout), then ``.lab/commit.json`` (verified), then the variables
``FASTNCSN_COMMIT`` / ``FASTNCSN_TREE_CLEAN`` (set by hand; ``commit_source`` says ``env``), else none.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the commit file, relative to the repository root (``.gitignore`` has ``/.lab/``)
STAMP_PATH = os.path.join(".lab", "commit.json")
#: paths of our own that never make a tree dirty
OWN_PATHS = (".lab/",)


def _git(root: str, *args: str) -> Optional[str]:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, cwd=root,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def blob_sha(path: str) -> str:
    """The git blob hash of the file (or symbolic link) at ``path``: sha1 of ``b"blob <size>\\0" + content``."""
    data = os.readlink(path).encode() if os.path.islink(path) else open(path, "rb").read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _dirty(porcelain: str) -> list:
    """Paths that ``git status --porcelain`` lists, less :data:`OWN_PATHS`."""
    paths = [line[3:] for line in porcelain.splitlines() if line.strip()]
    return [p for p in paths if not p.startswith(OWN_PATHS)]


def prepare(root: str = ROOT) -> dict:
    """The commit file's content for the checkout at ``root``: commit, clean flag (with the dirty paths), and
    ``files`` = {path: blob hash} of every tracked file as it is in the working tree.  Raises
    ``SystemExit`` when ``root`` is not a git checkout."""
    head = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=all")
    listed = _git(root, "ls-files", "-s")
    if head is None or status is None or listed is None:
        raise SystemExit(f"{root}: not a git checkout (git rev-parse / status / ls-files failed)")
    files = {}
    for line in listed.splitlines():
        meta, path = line.split("\t", 1)
        if meta.split()[0] == "160000":                   # a submodule: not a file of ours
            continue
        full = os.path.join(root, path)
        if os.path.lexists(full):
            files[path] = blob_sha(full)
    dirty = _dirty(status)
    return dict(commit=head.strip(), tree_clean=not dirty, dirty=dirty[:50], files=files)


def write_stamp(root: str = ROOT) -> str:
    """Write :func:`prepare` of ``root`` to ``root/.lab/commit.json`` atomically; returns the path."""
    info = prepare(root)
    path = os.path.join(root, STAMP_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=0, sort_keys=True)
    os.replace(tmp, path)
    return path


def verify_stamp(info: dict, root: str = ROOT) -> list:
    """Tracked files of the commit file ``info`` whose content at ``root`` differs (or is missing)."""
    bad = []
    for path, sha in sorted(info.get("files", {}).items()):
        full = os.path.join(root, path)
        if not os.path.lexists(full) or blob_sha(full) != sha:
            bad.append(path)
    return bad


def git_info(root: str = ROOT) -> dict:
    """``commit``, ``tree_clean``, ``commit_source`` ("git" | "stamp" | "env" | None) and, from a commit file
    whose files do not match, ``stamp_mismatch`` (the first paths): then ``commit`` is None (unknown)."""
    head = _git(root, "rev-parse", "HEAD")
    if head is not None:
        status = _git(root, "status", "--porcelain", "--untracked-files=all")
        return dict(commit=head.strip(), tree_clean=None if status is None else not _dirty(status),
                    commit_source="git")
    path = os.path.join(root, STAMP_PATH)
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
        bad = verify_stamp(info, root)
        if bad:
            return dict(commit=None, tree_clean=False, commit_source="stamp", stamp_commit=info.get("commit"),
                        stamp_mismatch=bad[:20])
        return dict(commit=info.get("commit"), tree_clean=bool(info.get("tree_clean")), commit_source="stamp")
    commit = os.environ.get("FASTNCSN_COMMIT") or None
    clean = os.environ.get("FASTNCSN_TREE_CLEAN")
    return dict(commit=commit, tree_clean=None if clean is None else clean.lower() in ("1", "true", "yes"),
                commit_source="env" if commit else None)


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


_VERSIONS: dict = {}


def versions() -> dict:
    """Device and software of this process (measured once): ``device``, ``driver``, ``torch``, ``cuda``
    (torch's CUDA), ``cudnn``, ``triton``, ``python``, ``capability``, ``sm_count``, ``l2_bytes`` (None
    where unknown, e.g. every device field without CUDA)."""
    if not _VERSIONS:
        import torch
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        v = dict(device=None, driver=None, torch=torch.__version__, cuda=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                 triton=triton_version, python=platform.python_version(), capability=None, sm_count=None,
                 l2_bytes=None)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            v.update(device=props.name, driver=_driver_version(), capability=f"{props.major}.{props.minor}",
                     sm_count=props.multi_processor_count, l2_bytes=getattr(props, "L2_cache_size", None))
        _VERSIONS.update(v)
    return dict(_VERSIONS)


def stamp(root: str = ROOT) -> dict:
    """:func:`git_info` plus ``versions``: what every record carries in its ``extra_info``."""
    return dict(git_info(root), versions=versions())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.provenance", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("prepare", "show"),
                    help="prepare: write .lab/commit.json from this checkout; show: print the stamp of this tree")
    ap.add_argument("--root", default=ROOT, help="repository root (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.command == "prepare":
        path = write_stamp(a.root)
        with open(path) as f:
            info = json.load(f)
        print(f"{path}: commit {info['commit']} {'clean' if info['tree_clean'] else 'DIRTY'}, "
              f"{len(info['files'])} files" + ("" if info["tree_clean"] else f"; dirty: {' '.join(info['dirty'][:8])}"))
        return 0
    print(json.dumps(stamp(a.root), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
