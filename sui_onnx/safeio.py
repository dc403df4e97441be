"""Files in, files out and text to the terminal: the one definition of what sui-onnx may read, what
it may replace and how user-supplied text is shown (docs/security.md).

Inputs: every file sui-onnx reads is opened by ``open_input``, which refuses anything that is not a
regular file (a FIFO would block the read forever, ``/dev/zero`` never ends, a socket or a device is
not data). The check is made on the opened descriptor (opened without blocking), so nothing can be
swapped in between; ``read_input`` also bounds how much is read.

Outputs: ``atomic_write`` writes a temporary file beside the destination, fsyncs it and renames it
over the destination, so a reader never sees half a file. The file gets the permissions an ordinary
write would give: those of the file it replaces, else 0666 less the umask. A destination that is a
symlink is replaced by the file (its target is never written: a link planted in a shared folder
cannot redirect a write); one that is, or links to, a FIFO, a device or another special file is
refused. Inside ``all_or_nothing()`` the renames wait until every file of the block is written:
a run that fails on one of its outputs (a full disk) replaces none of them.

Text: ``printable`` makes text from files, models and arguments safe to print (control characters,
escape sequences and lone surrogates become visible escapes, so the text stays one line);
``markup`` does the same and escapes rich markup, for everything user-supplied that goes into rich.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import SuiError

# C0 controls (newline and tab included: one line stays one line), DEL, C1 controls, the Unicode
# line/paragraph separators, bidirectional overrides (which reorder what the terminal shows) and
# lone surrogates (which cannot be encoded to the terminal at all)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# characters XML 1.0 cannot hold (JUnit reports): controls other than tab/newline/CR, surrogates, U+FFFE/F
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match) -> str:
    ch = m.group(0)
    if ch in _SHORT:
        return _SHORT[ch]
    c = ord(ch)
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: Any) -> str:
    """``text`` with every control character, escape sequence and lone surrogate written as a
    visible escape (``\\x1b``, ``\\n``, ``\\ud800``): safe for a terminal, and one line."""
    return _UNPRINTABLE.sub(_escape_char, str(text))


def markup(text: Any) -> str:
    """User-supplied text for a rich markup string or table cell: printable, and rich's markup
    (``[bold]``, ``[/]``) shown as written instead of interpreted."""
    from rich.markup import escape

    return escape(printable(text))


def size_text(n: float) -> str:
    """A byte count for a message, in the unit that shows it (bytes, KiB, MiB, GiB, TiB)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def xml_text(text: Any) -> str:
    """Text XML 1.0 can hold: the characters it forbids written as visible escapes."""
    return _NOT_XML.sub(_escape_char, str(text))


# -- inputs ----------------------------------------------------------------------------------------
def file_kind(mode: int) -> str:
    """What a stat mode describes, in words."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def special_kind(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a regular file, a folder or absent; else what it is (symlinks followed)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return file_kind(mode)


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def open_input(path: str | os.PathLike, error: type[SuiError] = SuiError) -> IO[bytes]:
    """Open a regular file for reading; anything else (missing, a folder, a FIFO, a device, a
    socket, unreadable) raises ``error`` with one line naming the path."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{printable(path)}: no such file") from None
    except IsADirectoryError:
        raise error(f"{printable(path)}: is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{printable(path)}: cannot read ({_reason(exc)})") from None
    except ValueError:  # a NUL byte in the path
        raise error(f"{printable(path)}: not a valid path") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = file_kind(mode)
            raise error(f"{printable(path)}: is a {kind}, not a regular file"
                        + (" (sui-onnx reads regular files only)" if kind != "folder" else ""))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_input(path: str | os.PathLike, error: type[SuiError] = SuiError) -> None:
    """Refuse a path that exists but is neither a regular file nor a folder (without opening it)."""
    kind = special_kind(path)
    if kind is not None:
        raise error(f"{printable(path)}: is a {kind}, not a regular file (sui-onnx reads regular files only)")


def read_input(path: str | os.PathLike, limit: int, error: type[SuiError] = SuiError, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``open_input``'s checks, then a
    bounded read: a larger file is an error, never a read without end)."""
    with open_input(path, error) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"{printable(path)}: cannot read ({_reason(exc)})") from None
    if len(data) > limit:
        raise error(f"{printable(path)}: larger than {limit / 2**20:g} MiB, too large for a {what}")
    return data


# -- outputs ---------------------------------------------------------------------------------------
def umask() -> int:
    """This process's umask (read from /proc where it can be, so it is never changed, even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_default(path: str | os.PathLike, mode: int) -> None:
    """Give ``path`` the permissions ``mode`` less the umask (what an ordinary mkdir or open would
    have left, where mkdtemp/mkstemp made it private); a failure leaves it as it is."""
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~umask())


def new_file_mode(target: str | os.PathLike) -> int:
    """The permissions an ordinary write to ``target`` would leave: those of the regular file it
    replaces, else 0666 less the umask."""
    try:
        st = os.lstat(target)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask()


def first_repeat(items: list[Any], digest: Callable[[Any], str],
                 size: Callable[[Any], Any] | None = None) -> tuple[int, int, str] | None:
    """The first item whose content repeats an earlier one's, as (earlier, later, digest), or None.
    With ``size``, only items of a size another item shares are hashed (distinct sizes cannot
    repeat; None: unknown, never hashed)."""
    sizes = [size(x) for x in items] if size is not None else None
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if sizes is not None and (sizes[i] is None or sizes.count(sizes[i]) < 2):
            continue
        d = digest(item)
        j = seen.setdefault(d, i)
        if j != i:
            return j, i, d
    return None


def repeat_phrase(earlier: Any, later: Any, digest: str) -> str:
    """How a repeated input is named: "given twice" (the same file), else a copy of the earlier one."""
    if Path(later).resolve() == Path(earlier).resolve():
        return "given twice"
    return f"the same content as {printable(earlier)} (sha256 {digest[:12]})"


def output_target(path: str | os.PathLike) -> Path:
    """The directory entry a write to ``path`` replaces: ``path`` itself. A symlink there is
    replaced by the new file and its target is left alone: a write never follows a link to
    wherever it points (a link planted in a shared folder cannot redirect it)."""
    return Path(path)


_SYSTEM_TREES = ("/dev", "/proc", "/sys")  # devices, standard streams (/dev/stdout, /proc/self/fd/1), kernel files


def system_path(path: str | os.PathLike) -> str | None:
    """The system tree (/dev, /proc, /sys) ``path`` or its folder lies in, else None: an output
    there is never a file of the user's (/dev/stdout redirected to a file is still the stream)."""
    for p in (os.path.abspath(path), os.path.realpath(os.path.dirname(os.path.abspath(path)) or "."),
              os.path.realpath(path)):
        if (p == "/dev/shm" or p.startswith("/dev/shm/")) and not os.path.islink(path):
            continue  # a RAM file system for files, not a device
        for tree in _SYSTEM_TREES:
            if p == tree or p.startswith(tree + os.sep):
                return tree
    return None


_PENDING: contextvars.ContextVar[list[tuple[str, Path]] | None] = contextvars.ContextVar("pending_renames", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """The files ``atomic_write`` writes in this block are renamed into place only when the block
    ends without an error; otherwise their temporary files are removed and no destination changes."""
    pending: list[tuple[str, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        _discard(pending)
        raise
    finally:
        _PENDING.reset(token)
    for n, (tmp, target) in enumerate(pending):
        try:
            os.replace(tmp, target)
        except OSError as exc:
            _discard(pending[n:])
            raise SuiError(f"cannot write {printable(str(target))}: {_reason(exc)}") from None


def _discard(pending: list[tuple[str, Path]]) -> None:
    for tmp, _ in pending:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], error: type[SuiError] = SuiError,
                 hint: str = "") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``'s target, fsync it and rename it
    over the target (see the module doc). Returns the path written; a failure raises ``error``
    with one line (``hint`` appended to a file-system error's) and leaves neither a partial file
    nor the temporary one."""
    target = output_target(path)
    kind = special_kind(path) or special_kind(target)  # the path itself first: /dev/stdout is a magic link
    if os.path.isdir(target):
        kind = "folder"
    if kind is not None and kind != "folder":
        raise error(f"refusing to write {printable(path)}: it is a {kind}, not a regular file"
                    + (" (use '-' for standard output)" if kind in ("character device", "FIFO (named pipe)") else ""))
    if kind == "folder":
        raise error(f"cannot write {printable(path)}: it is a folder")
    tree = system_path(path)
    if tree is not None:
        raise error(f"refusing to write {printable(path)}: it is in {tree}, not a file of yours "
                    "(use '-' for standard output)")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise error(f"cannot write {printable(path)}: {_reason(exc)}{hint}") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, new_file_mode(target))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        pending = _PENDING.get()
        if pending is None:
            os.replace(tmp, target)
        else:
            pending.append((tmp, target))
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise error(f"cannot write {printable(path)}: {_reason(exc)}{hint}") from None
        raise
    return target


# -- native code writing to the process's stdout/stderr ----------------------------------------------
@contextlib.contextmanager
def redirected_fds(target: int, fds: tuple[int, ...] = (1, 2)) -> Iterator[tuple[int, ...]]:
    """Point the process's file descriptors ``fds`` at the open descriptor ``target`` while the block
    runs (what native code writes, not only Python's sys.stdout/sys.stderr), and put them back after.
    A descriptor that is not open is left alone; the ones redirected are yielded. The one place that
    redirects process-wide output (``captured_stderr`` and the export log go through it)."""
    saved: list[tuple[int, int]] = []
    try:
        for fd in fds:
            try:
                dup = os.dup(fd)
            except OSError:
                continue
            saved.append((fd, dup))
            os.dup2(target, fd)
        yield tuple(fd for fd, _ in saved)
    finally:
        for fd, dup in saved:
            os.dup2(dup, fd)
            os.close(dup)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send what native code (a Rust panic message, onnxruntime's log) writes to file descriptor 2
    to a temporary file instead of the terminal while the block runs; the list yielded holds that
    text afterwards. Python's own sys.stderr is flushed first and restored after."""
    box: list[str] = []
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no stderr to redirect
        yield box
        return
    with tempfile.TemporaryFile() as tmp:
        try:
            with redirected_fds(tmp.fileno(), (2,)):
                try:
                    yield box
                finally:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.flush()
        finally:
            with contextlib.suppress(OSError):
                tmp.seek(0)
                box.append(tmp.read(1 << 16).decode("utf-8", "replace"))
