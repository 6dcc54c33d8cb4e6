"""Writing a golden or a report safely: an atomic replace, and a real probe of whether a path is writable."""

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader, or a run killed
    half-way, sees the old file or the new one.  The file gets the usual mode (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unwritable(path: Path):
    """Why a file could not be written at ``path`` (folders created as needed), or None.

    Tried for real (a probe file in the nearest existing folder): permission bits say nothing for root."""
    path = Path(path)
    if path.exists() and not path.is_file():
        return f"{path} is not a file"
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    probe = folder / f".mlxth-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        return f"cannot write in {folder} ({err.strerror})"
    probe.unlink()
    return None
