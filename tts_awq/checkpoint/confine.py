"""Which files a stage may read, copy or upload: every one must resolve (realpath) inside its own root.

A root is SRC, a ``--codec-from`` base, a ``--reference`` or a package. A link that resolves inside its root is
read (and copied) as the regular file it points to; so is a Hugging Face cache snapshot, whose files are links
``snapshots/<rev>/<file> -> ../../blobs/<hash>`` into the same repo's ``blobs/``. Any other link, and any index
entry that leaves the root (absolute, ``..`` or through a link), is refused with one line naming the entry and
where it points. Pickle files (``pytorch_model.bin`` and the like: loading them can run code) are never copied
into an output by a stage (:func:`tts_awq.checkpoint.files.copy_tree` logs what it leaves out), and an upload
holds none unless the user allows it (:func:`check_upload_tree`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from tts_awq.errors import UserError

#: Directory names never walked: VCS and tool caches (a package or checkpoint never needs them).
SKIPPED_NAMES = frozenset({".cache", ".git", "__pycache__"})
#: File suffixes of Python pickles (torch.save, joblib, ...): loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_FIX = "replace the link by the file itself, or remove it"


def roots_of(root: Path) -> tuple[Path, ...]:
    """The real directories files of ``root`` may resolve into: ``root`` itself, plus ``<repo>/blobs`` when
    ``root`` is a Hugging Face cache snapshot ``<repo>/snapshots/<rev>``."""
    real = Path(os.path.realpath(root))
    roots = [real]
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        roots.append(Path(os.path.realpath(real.parent.parent / "blobs")))
    return tuple(roots)


def _inside(real: Path, roots: tuple[Path, ...]) -> bool:
    return any(real == r or r in real.parents for r in roots)


def _outside_error(path: Path, real: Path, root: Path, what: str) -> UserError:
    return UserError(f"{path}: {what} points outside {root} (to {real}); tts-awq reads, copies and uploads nothing "
                     f"from outside its roots: {_FIX}")


def confined(root: Path, rel: str, what: str = "file") -> Path:
    """``root / rel`` once ``rel`` is a plain relative path whose real path stays inside ``root`` (see module doc).

    Used for every name a file of the checkpoint gives (index entries), before anything is read."""
    root = Path(root)
    pure = PurePosixPath(str(rel))
    if not str(rel) or pure.is_absolute() or ".." in pure.parts or "\\" in str(rel) or str(rel).startswith("~"):
        raise UserError(f"{root}: {what} {str(rel)!r} leaves the checkpoint directory (an absolute path or ..); "
                        "only names relative to the directory are accepted: restore the original file")
    path = root / pure
    real = Path(os.path.realpath(path))
    if not _inside(real, roots_of(root)):
        raise _outside_error(path, real, root, what)
    return path


def walk_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (links resolving inside it followed, links to directories too) as sorted
    POSIX relative paths; a link resolving outside is refused (one-line UserError) before anything is read. Names in
    :data:`SKIPPED_NAMES`, broken links and non-regular files (FIFOs, sockets) are left out."""
    root = Path(root)
    roots = roots_of(root)
    found: list[str] = []

    def visit(directory: Path, prefix: str, chain: frozenset[Path]) -> None:
        with os.scandir(directory) as entries:
            listed = sorted(entries, key=lambda e: e.name)
        for entry in listed:
            if entry.name in SKIPPED_NAMES:
                continue
            path, rel = Path(entry.path), f"{prefix}{entry.name}"
            if entry.is_symlink():
                real = Path(os.path.realpath(path))
                if not _inside(real, roots):
                    raise _outside_error(path, real, root, "a link")
                if not real.exists():
                    continue  # a broken link holds nothing to read
            if entry.is_dir():  # follows an inside link
                real_dir = Path(os.path.realpath(path))
                if real_dir in chain:
                    raise UserError(f"{path}: a link loop (back to {real_dir}); {_FIX}")
                visit(path, f"{rel}/", chain | {real_dir})
            elif entry.is_file():
                found.append(rel)

    visit(root, "", frozenset({Path(os.path.realpath(root))}))
    return sorted(found)


def is_pickle(path: Path) -> bool:
    """A pickle by name (:data:`PICKLE_SUFFIXES`) or by content: a raw pickle (protocol 2-5 opcode) or a
    torch.save zip (holds a ``*.pkl`` member). safetensors files are never pickles (their first bytes are a
    header length that may look like a pickle opcode)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return True
    if name.endswith(".safetensors"):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(member.endswith(".pkl") for member in archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
    return False


def check_upload_tree(folder: Path, allow_pickle: bool = False) -> list[tuple[str, int]]:
    """Re-check a staged upload (or any output about to leave the machine): every entry a regular file (no link,
    no FIFO), nothing resolving outside ``folder``, no pickle unless ``allow_pickle``. Returns ``[(relative path,
    size)]`` sorted, which is what is sent."""
    folder = Path(folder)
    real_root = Path(os.path.realpath(folder))
    files: list[tuple[str, int]] = []
    for directory, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(directory) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise UserError(f"{path}: the staged upload holds a link (to {os.path.realpath(path)}); nothing was "
                                "sent: uploads carry regular files only")
            if name in dirnames:
                continue
            if not path.is_file():
                raise UserError(f"{path}: the staged upload holds a non-regular file; nothing was sent")
            if not _inside(Path(os.path.realpath(path)), (real_root,)):
                raise _outside_error(path, Path(os.path.realpath(path)), folder, "a staged file")
            if not allow_pickle and is_pickle(path):
                raise UserError(f"{path}: {rel} is a pickle file (loading it can run code); nothing was sent: remove "
                                "it from the package, or pass --allow-pickle to upload it anyway")
            files.append((rel, path.stat().st_size))
    return sorted(files)
