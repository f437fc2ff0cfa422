"""Files written whole or not at all (checkpoints, metrics, configs, predictions, figures), the
lock that keeps a run folder to one process, and files opened only when they are regular (a
FIFO in their place would block for ever)."""

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from .errors import BpnetError

TEMP_SUFFIX = ".tmp"
NAME_MAX = 255  # bytes in one file name, on the common file systems


@contextmanager
def replacing(path, error=BpnetError):
    """A binary file whose contents replace ``path`` once written whole: a temp file beside it,
    fsync, rename, fsync of the folder. A crash at any instant leaves the old file or the new
    one; a failed write (a full disk, a read-only file) raises ``error`` naming ``path``, and
    leaves the old file as it was and no temp file.
    """
    tmp = None
    try:
        target = _target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if not os.access(target, os.W_OK):  # a rename would replace it; open() would not
                raise PermissionError(errno.EACCES, "the file is read-only")
            mode = target.stat().st_mode & 0o7777
        else:
            mode = 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=TEMP_SUFFIX,
                                   dir=target.parent)
        os.chmod(tmp, mode)  # mkstemp makes 0600: keep the old file's mode, else an ordinary one
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(target.parent)
    except OSError as e:
        raise error(f"cannot write: {e.strerror or e}; what was written before is untouched",
                    source=path) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _target(path):
    """The file ``path`` names, through symlinks, as open() would find it."""
    try:
        os.stat(path)  # a loop of symlinks: ELOOP, which Path.resolve() hides from Python 3.13
    except FileNotFoundError:
        pass  # a new file, or a link to one
    try:
        return Path(path).resolve()
    except RuntimeError:  # a loop, before Python 3.13
        raise OSError(errno.ELOOP, "a loop of symbolic links") from None


def _temp_prefix(name):
    """``.NAME.``, unless the temp name would be longer than a file name may be (255 bytes:
    the prefix, 8 random characters and .tmp); only bpnet's own short names are ever cleaned
    up by ``remove_stale_temps``, so a long one may be shortened."""
    prefix = f".{name}."
    if len(os.fsencode(prefix)) + 8 + len(TEMP_SUFFIX) > NAME_MAX:
        prefix = ".bpnet-write."
    return prefix


def write_text(path, text):
    """Replace a text file whole, or raise a BpnetError."""
    with replacing(path) as f:
        f.write(text.encode())


def remove_stale_temps(folder, names):
    """Delete the temp files a killed write of ``names`` (file names or glob patterns, such as
    ``ckpt-*.npz``) left in ``folder``: they were never renamed into place."""
    for name in names:
        for tmp in Path(folder).glob(_temp_pattern(name)):
            tmp.unlink(missing_ok=True)


class NotRegularFile(OSError):
    """A FIFO, device or socket where bpnet reads or writes a file of its own."""


def open_regular(path, flags, mode):
    """``path`` opened with os.open ``flags`` as a file object of ``mode``, or an OSError:
    IsADirectoryError for a folder, NotRegularFile for anything else that is not a regular
    file. Opened without blocking, then checked: a FIFO would block a plain open for ever,
    waiting for a process at its other end (a regular file ignores O_NONBLOCK)."""
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        if stat.S_ISDIR(kind):  # Linux opens a folder read-only without complaint
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        raise NotRegularFile(errno.EINVAL, "is not a regular file", str(path))
    return os.fdopen(fd, mode)


@contextmanager
def npz_archive(path, error=BpnetError, digest=None):
    """An .npz file opened without pickle, as numpy's NpzFile. Whatever goes wrong opening it
    or reading it in the block becomes ``error`` naming ``path``, never numpy's advice to
    load with allow_pickle, which bpnet never does. ``digest``, a hashlib object, is fed the
    file's bytes after the block: those of the file read, even if a save replaced it since."""
    try:
        with open_regular(path, os.O_RDONLY, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic == b"\x93NUMPY":
                _refuse_npy(f, path, error)
            if not magic.startswith(b"PK"):
                raise error("not an .npz archive: no zip archive inside", source=path)
            with np.load(f, allow_pickle=False) as z:
                yield z
            if digest is not None:
                f.seek(0)
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    except FileNotFoundError:
        raise error("file not found", source=path) from None
    except IsADirectoryError:
        raise error("is a folder, expected a file", source=path) from None
    except NotRegularFile:
        raise error("is not a regular file (a FIFO or a device?)", source=path) from None
    except OSError as e:  # no permission, a loop of symbolic links
        raise error(f"cannot read: {e.strerror or e}", source=path) from None
    except BpnetError:
        raise
    except ValueError as e:
        if "Object arrays" in str(e):
            raise error("holds an object array, which bpnet never loads (it would need "
                        "pickle)", source=path) from None
        raise error(f"not a valid .npz file: {e}", source=path) from None
    except Exception as e:  # zip, zlib and header failures alike: not a usable .npz
        raise error(f"not a valid .npz file ({type(e).__name__}: {e})", source=path) from None


def _refuse_npy(f, path, error):
    """An .npy file where an .npz was expected: say which, an object array first."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        dtype = read(f)[2] if read else None
    except ValueError:
        dtype = None
    if dtype is not None and dtype.hasobject:
        raise error("holds an object array, which bpnet never loads (it would need pickle)",
                    source=path)
    raise error("not an .npz archive: it holds a single .npy array (numpy.savez writes an "
                ".npz)", source=path)


def refuse_special(path, error=BpnetError):
    """Raise ``error`` naming ``path`` if it is a folder or not a regular file: reading a FIFO
    waits for ever for a writer. A missing or unreadable path is left to the read that follows,
    which names its own problem."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISDIR(mode):
        raise error("is a folder, expected a file", source=path)
    if not stat.S_ISREG(mode):
        raise error("is not a regular file (a FIFO or a device?)", source=path)


def open_lock_file(path):
    """``path`` opened for locking (made if missing), or a BpnetError naming it."""
    try:
        return open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a")
    except NotRegularFile:
        raise BpnetError("is not a regular file; bpnet keeps the run's lock there",
                         source=path) from None
    except OSError as e:
        raise BpnetError(f"cannot open the run's lock file: {e.strerror or e}",
                         source=path) from None


def hold_lock(file):
    """Take an exclusive lock on an open file for as long as it stays open. False if another
    process holds it; True when taken, and where the system has no locks (Windows, some
    network file systems), where runs are not guarded."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def is_stale_temp(file_name, names):
    """Whether ``file_name`` is the temp file of a write of one of ``names``."""
    return any(fnmatch(file_name, _temp_pattern(name)) for name in names)


def _temp_pattern(name):
    return f".{name}.*{TEMP_SUFFIX}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder):
    # makes the rename itself durable; some file systems refuse to open or sync a folder
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
