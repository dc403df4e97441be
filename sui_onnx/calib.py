"""Calibration sources -> token-id batches, streamed (nothing holds the whole corpus in tokens).

Sources: .txt files, folders of .txt, .jsonl (a "text" field per line), .npy token ids of shape
[n_sequences, seq_len] (each row one sequence, every position a real token), and the bundled default
corpus. Text is tokenized with the model's tokenizer.json through the `tokenizers` library. Windows
are packed from the token stream in source order (deterministic), so there is never any padding:
every token fed is a real token and counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Generator, Iterator, Sequence

import numpy as np

from .errors import CalibrationError, first_line, option
from .layout import TRANSFORMERS_JS_FOLDER

DEFAULT_SEQ_LEN = 256
DEFAULT_BATCH_SIZE = 8
MIN_DEFAULT_TOKENS = 16_384
MAX_DEFAULT_TOKENS = 1 << 20
MIXES = ("sequential", "even")
_TEXT_CHUNK_CHARS = 64_000  # text is tokenized in pieces of about this size


def bundled_corpus() -> Path:
    """The public-domain English text shipped inside the package (see sui_onnx/data/README.md)."""
    return Path(str(resources.files("sui_onnx") / "data" / "calib.txt"))


def default_token_budget(widths: Sequence[int]) -> int:
    """At least 10 x the widest tap (metrics.md recommends N >= 10 D), at least 16k, capped at 1M."""
    return int(min(MAX_DEFAULT_TOKENS, max(MIN_DEFAULT_TOKENS, 10 * max(widths, default=0))))


@dataclass(frozen=True)
class Batch:
    """A batch of equal-length windows of real tokens, ready to feed."""

    input_ids: np.ndarray  # int64 [B, L]

    @property
    def tokens(self) -> int:
        return int(self.input_ids.size)


@dataclass
class CalibrationSpec:
    """What to feed: sources, packing and the token budget (None: the whole source / the default)."""

    sources: list[Path] = field(default_factory=list)  # empty: the bundled corpus
    seq_len: int = DEFAULT_SEQ_LEN
    batch_size: int = DEFAULT_BATCH_SIZE
    tokens: int | None = None
    mix: str = "sequential"  # sequential: sources in order until the budget; even: an equal share each

    def __post_init__(self) -> None:
        self.sources = [Path(s) for s in self.sources]
        if self.mix not in MIXES:
            raise CalibrationError(f"{option('mix')} must be one of {', '.join(MIXES)}, got {self.mix!r}")
        if self.seq_len < 1:
            raise CalibrationError(f"{option('seq_len')} must be at least 1, got {self.seq_len}")
        if self.batch_size < 1:
            raise CalibrationError(f"{option('batch_size')} must be at least 1, got {self.batch_size}")
        if self.tokens is not None and self.tokens < 2:
            raise CalibrationError(f"{option('tokens')} must be at least 2 (a covariance needs two tokens), got {self.tokens}")


def _is_file(p: Path) -> bool:
    """A regular file (symlinks followed); False for what cannot be examined (an unreadable link)."""
    try:
        return p.is_file()
    except OSError:
        return False


def text_files(path: Path) -> list[Path]:
    """The .txt files a text source reads: the file itself, or a folder's, sorted (none: an error)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if _is_file(p))
        if not files:
            raise CalibrationError(f"{path}: folder holds no .txt files")
        return files
    return [path]


_READ_CHUNK = 1 << 20
_MAX_RECORD_CHARS = 64 << 20  # one .jsonl line; a longer one is refused, never read whole


def _pieces(text: str, final: bool) -> Iterator[tuple[str, str]]:
    """Cut ``text`` into pieces of about _TEXT_CHUNK_CHARS (after a newline where there is one, so
    words are not split): yields (piece, ""), and, unless ``final``, leaves the unfinished tail to
    the caller as a last (\"\", tail)."""
    start = 0
    while len(text) - start > _TEXT_CHUNK_CHARS:
        end = start + _TEXT_CHUNK_CHARS
        cut = text.rfind("\n", start, end)
        end = cut + 1 if cut > start else end
        yield text[start:end], ""
        start = end
    if final:
        if start < len(text):
            yield text[start:], ""
    else:
        yield "", text[start:]


def _wide_bom(head: bytes) -> str | None:
    """"UTF-32" / "UTF-16" when ``head`` starts with that encoding's byte order mark (either byte order)."""
    if head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "UTF-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    return None


def _read_text(path: Path, empty_ok: bool = False) -> Iterator[str]:
    """Yield pieces of a UTF-8 text file (or UTF-16/32 with a byte order mark), read in chunks
    (memory does not grow with the file); binary or undecodable content is a clear error, and so
    is anything but a regular file (a FIFO or a device is refused, never read). A file with no
    text is an error unless ``empty_ok`` (a folder's member: skipped, as a blank .jsonl record)."""
    import codecs

    from .safeio import open_input

    fh = open_input(path, CalibrationError)
    decoder = codecs.getincrementaldecoder("utf-8")()
    encoding = "UTF-8"
    consumed, tail, text_seen = 0, "", False
    with fh:
        while True:
            try:
                raw = fh.read(_READ_CHUNK)
            except OSError as exc:
                raise CalibrationError(f"{path}: cannot read ({exc.strerror})") from None
            if consumed == 0:
                wide = _wide_bom(raw)  # UTF-16/32 with a byte order mark (Windows PowerShell's '>' writes UTF-16)
                if wide is not None:
                    encoding = wide
                    decoder = codecs.getincrementaldecoder(wide.lower())()
                elif b"\x00" in raw[:65536]:
                    raise CalibrationError(f"{path}: looks binary (NUL bytes), expected UTF-8 text")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise CalibrationError(f"{path}: not {encoding} text (bad byte at offset {consumed + exc.start})") from None
            consumed += len(raw)
            if consumed == len(raw):
                text = text.removeprefix("\ufeff")  # a byte order mark is not text
            text_seen = text_seen or bool(text.strip())
            for piece, rest in _pieces(tail + text, final=not raw):
                if piece and (text_seen or not empty_ok or piece.strip()):  # a skipped member gives nothing
                    yield piece
                tail = rest
            if not raw:
                break
    if not text_seen and not empty_ok:
        raise CalibrationError(f"{path}: empty text file (no characters but white space)")


def _read_jsonl(path: Path) -> Iterator[str]:
    """The "text" field of each line of a .jsonl file, in pieces (a long record is tokenized in
    pieces like a .txt file, so memory stays that of the text); a BOM is skipped; a line that is
    not a JSON object with a string "text" (nested too deeply, a lone surrogate, over 64 Mi
    characters) is an error naming the line."""
    import io

    from .safeio import open_input

    raw = open_input(path, CalibrationError)
    fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    with fh:
        try:
            lineno = 0
            while True:
                line = fh.readline(_MAX_RECORD_CHARS + 1)
                if not line:
                    break
                lineno += 1
                if len(line) > _MAX_RECORD_CHARS and not line.endswith("\n"):
                    raise CalibrationError(f"{path}:{lineno}: record longer than {_MAX_RECORD_CHARS >> 20} Mi "
                                           "characters (split the text into several records)")
                line = line.lstrip("\ufeff")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except RecursionError:
                    raise CalibrationError(f"{path}:{lineno}: JSON nested too deeply") from None
                except json.JSONDecodeError as exc:
                    raise CalibrationError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise CalibrationError(f"{path}:{lineno}: expected an object with a string \"text\" field")
                text = record["text"]
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise CalibrationError(
                        f"{path}:{lineno}: \"text\" holds a lone surrogate (\\u{ord(text[exc.start]):04x}), "
                        "not valid Unicode") from None
                for piece, _ in _pieces(text + "\n", final=True):
                    yield piece
        except UnicodeDecodeError:
            raise CalibrationError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read ({exc.strerror})") from None


def source_digest(path: Path) -> str:
    """Hex SHA-256 of a source's content, so a run can tell whether two sources hold the same data:
    a file's bytes; a folder's sorted .txt files (relative path, NUL, bytes, for each)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [(None, path)] if path.is_file() else [(f.relative_to(path).as_posix(), f) for f in text_files(path)]
    for rel, f in files:
        if rel is not None:
            h.update(rel.encode("utf-8") + b"\0")
        try:
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise CalibrationError(f"{f}: cannot read ({exc.strerror})") from None
    return h.hexdigest()


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer's post-processor adds before a single text (its BOS / CLS), if any."""
    try:
        plain = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a", add_special_tokens=True).ids
    except Exception:  # noqa: BLE001 - a post-processor that fails on a plain text adds nothing usable
        return []
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return [int(i) for i in full[:start]]
    return []


def tokenizer_path(folder: Path) -> Path | None:
    """The tokenizer.json a model in ``folder`` uses: its own, or in the transformers.js layout
    (``onnx/model*.onnx``, the tokenizer in the repo folder one level up) the one above a folder
    named ``onnx`` that has none; None when there is neither."""
    folder = Path(folder)
    above = folder.parent / "tokenizer.json" if folder.name == TRANSFORMERS_JS_FOLDER else None
    for path in (folder / "tokenizer.json", above):
        if path is not None and path.is_file():
            return path
    return None


def load_tokenizer(folder: Path):
    """Load tokenizer.json from the model's folder with `tokenizers` (no transformers import),
    found by `tokenizer_path`."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    path = tokenizer_path(folder)
    if path is None:
        above = " or above it (transformers.js layout)" if folder.name == TRANSFORMERS_JS_FOLDER else ""
        raise CalibrationError(
            f"text calibration needs a tokenizer: no tokenizer.json beside the model in {folder}{above} "
            "(copy the model's tokenizer.json there, or pass token ids as a .npy file)"
        )
    from .safeio import captured_stderr, check_input, printable

    check_input(path, CalibrationError)
    try:
        with captured_stderr():  # a Rust panic prints its own message and backtrace on fd 2
            tokenizer = Tokenizer.from_file(str(path))
        # sui-onnx packs the windows itself: a tokenizer.json's truncation or padding would cut or pad
        # the calibration text (and a bad truncation setting panics inside encode)
        tokenizer.no_truncation()
        tokenizer.no_padding()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # plain Exception subclasses for bad files, pyo3 PanicException for panics
        first = first_line(exc)
        raise CalibrationError(f"{path}: not a valid tokenizer.json ({printable(first)[:120]})") from None
    return _GuardedTokenizer(tokenizer, path)


class _GuardedTokenizer:
    """A `tokenizers.Tokenizer` whose ``encode`` failures (errors, and Rust panics, whose message
    goes to fd 2 otherwise) are one CalibrationError line; everything else is the tokenizer's."""

    def __init__(self, tokenizer, path: Path):
        self._tokenizer = tokenizer
        self._path = path

    def encode(self, *args, **kwargs):
        from .safeio import captured_stderr, printable

        try:
            with captured_stderr():
                return self._tokenizer.encode(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            first = first_line(exc)
            raise CalibrationError(f"{self._path}: the tokenizer failed on the calibration text "
                                   f"({printable(first)[:120]})") from None

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


def refuse_repeated_sources(sources: Sequence[Path], what: str = "calibration source") -> None:
    """A source given twice (the same file, or another with the same content) would be read twice:
    its tokens counted twice. Refused with one line naming both. Only sources of equal size are
    hashed (cheap for the usual distinct sources)."""
    from .safeio import first_repeat, repeat_phrase

    def size(p: Path) -> tuple[bool, int] | None:  # (folder?, bytes): a folder never repeats a file
        try:
            return (True, sum(f.stat().st_size for f in text_files(p))) if p.is_dir() else (False, p.stat().st_size)
        except (OSError, CalibrationError):
            return None

    repeat = first_repeat([Path(s) for s in sources], source_digest, size)
    if repeat is not None:
        j, i, digest = repeat
        raise CalibrationError(f"{sources[i]}: {repeat_phrase(sources[j], sources[i], digest)}: every {what} is "
                               "read once (its tokens would count twice); give it once")


class CalibrationStream:
    """Iterates Batches from a CalibrationSpec; `total_tokens` is known before the first batch
    for .npy sources and is the budget (an upper bound) for text."""

    def __init__(self, spec: CalibrationSpec, tokenizer_folder: Path | None, widths: Sequence[int],
                 purpose: str = "calibration"):
        self.spec = spec
        self.purpose = purpose  # what its messages call the data: "calibration", "eval data"
        # eval: .npy rows are whole windows (their L - 1 predictions, recomputable by anyone): the
        # budget stops before a row it cannot hold whole, and a first row larger than it is kept whole
        self.whole_rows = purpose != "calibration"
        self.sources = spec.sources or [bundled_corpus()]
        self.tokenizer_folder = tokenizer_folder
        from .safeio import check_input

        for s in self.sources:
            if not s.exists():
                raise CalibrationError(f"{s}: no such {purpose} file or folder")
            check_input(s, CalibrationError)  # a FIFO or a device (/dev/zero) is never read
            if not s.is_dir() and s.suffix.lower() not in (".txt", ".jsonl", ".npy"):
                raise CalibrationError(f"{s}: unsupported {purpose} file (use .txt, .jsonl, .npy or a folder of .txt)")
            if s.is_dir() and s.suffix.lower() in (".jsonl", ".npy"):
                raise CalibrationError(f"{s}: is a folder, expected a {s.suffix.lower()} file")
        refuse_repeated_sources(self.sources, f"{purpose} source")
        self.token_ids = [self._open_npy(s) for s in self.sources if s.suffix.lower() == ".npy"]
        self.has_text = any(s.suffix.lower() != ".npy" for s in self.sources)
        self.tokenizer = load_tokenizer(tokenizer_folder) if self.has_text and tokenizer_folder else None
        if self.has_text and self.tokenizer is None:
            raise CalibrationError(f"text {purpose} needs the model's tokenizer.json")
        npy_tokens = sum(int(a.size) for a in self.token_ids)
        if spec.tokens is not None:
            self.budget = spec.tokens
        elif self.has_text:
            self.budget = npy_tokens + default_token_budget(widths)
        else:
            self.budget = npy_tokens  # token ids are used whole unless --tokens is given
        self.tokens_fed = 0
        self.source_tokens: list[int] | None = None  # per source, once iterated
        self._prefix: list[int] | None = None

    @staticmethod
    def _open_npy(path: Path) -> np.ndarray:
        from .safeio import open_input

        with open_input(path, CalibrationError):  # a regular file: never a FIFO or a device
            pass
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, TypeError, SyntaxError, OverflowError, MemoryError) as exc:
            raise CalibrationError(f"{path}: not a readable .npy array ({exc.__class__.__name__})") from None
        if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
            raise CalibrationError(f"{path}: not a .npy array (an .npz archive?)")
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise CalibrationError(f"{path}: token ids must have shape [n_sequences, seq_len], got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise CalibrationError(f"{path}: token ids must be integers, got {arr.dtype}")
        if arr.size and int(arr.min()) < 0:
            raise CalibrationError(f"{path}: token ids must be non-negative")
        return arr

    def describe(self) -> list[dict]:
        """Provenance of each source for the report."""
        out = []
        npys = iter(self.token_ids)  # the .npy sources' arrays, in source order
        for i, s in enumerate(self.sources):
            kind = "npy" if s.suffix.lower() == ".npy" else ("jsonl" if s.suffix.lower() == ".jsonl" else "text")
            entry = {"path": str(s), "kind": kind}
            if kind == "npy":  # each row is one window whatever --seq-len says
                entry["seq_len"] = int(next(npys).shape[1])
            if s == bundled_corpus():
                entry = {"path": "<bundled>/calib.txt", "kind": "text", "bundled": True}
            entry["sha256"] = source_digest(s)  # computed here, on demand: a large corpus is read once more
            if self.source_tokens is not None:
                entry["tokens"] = self.source_tokens[i]
            out.append(entry)
        return out

    # -- iteration -------------------------------------------------------------------------
    def _npy_windows(self, arr: np.ndarray) -> Iterator[np.ndarray]:
        for row in arr:
            yield np.asarray(row, dtype=np.int64)

    def _text_windows(self, source: Path, carry: list[int]) -> Iterator[np.ndarray]:
        prefix = self.prefix
        L = self.spec.seq_len - len(prefix)  # text tokens per window, after the tokenizer's BOS
        pieces = _read_jsonl(source) if source.suffix.lower() == ".jsonl" else (
            piece for f in text_files(source) for piece in _read_text(f, empty_ok=source.is_dir())
        )
        for piece in pieces:
            carry.extend(self.tokenizer.encode(piece, add_special_tokens=False).ids)
            while len(carry) >= L:
                yield np.asarray(prefix + carry[:L], dtype=np.int64)
                del carry[:L]

    @property
    def prefix(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (Gemma's and LLaMA's <bos>, BERT's
        [CLS]); every text window starts with them, as the model saw in training (Gemma without
        <bos> is far off its own distribution). Empty for tokenizers without such a template."""
        if self._prefix is None:
            self._prefix = leading_special_ids(self.tokenizer) if self.tokenizer is not None else []
            if self._prefix and len(self._prefix) >= self.spec.seq_len:
                raise CalibrationError(f"{option('seq_len')} {self.spec.seq_len} leaves no room for text after the "
                                       f"tokenizer's {len(self._prefix)} leading special token(s)")
        return self._prefix

    def _windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """(source index, window) in feeding order. ``even`` gives each source an equal share of
        the budget, taken from its start; a source too short for its share leaves the rest to the
        sources after it, and what is still left after the last is taken, in order, from the
        sources that had more. ``sequential`` runs the sources one after the other."""
        if self.spec.mix == "even" and len(self.sources) > 1:
            yield from self._even_windows()
            return
        carry: list[int] = []
        npy = iter(self.token_ids)
        for i, s in enumerate(self.sources):
            windows = self._npy_windows(next(npy)) if s.suffix.lower() == ".npy" else self._text_windows(s, carry)
            for w in windows:
                yield i, w
        if len(carry) >= 2:  # the text tail shorter than one window still counts
            yield len(self.sources) - 1, np.asarray(self.prefix + carry, dtype=np.int64)

    def _even_windows(self) -> Iterator[tuple[int, np.ndarray]]:
        arrays = iter(self.token_ids)
        npy = {i: next(arrays) for i, s in enumerate(self.sources) if s.suffix.lower() == ".npy"}
        n = len(self.sources)
        left = self.budget
        given: list[tuple[int, bool]] = []  # per source: windows given, whether it holds more
        for i in range(n):
            windows, more, used = yield from self._source_share(i, npy.get(i), left // (n - i), skip=0)
            given.append((windows, more))
            left -= used
        for i, (windows, more) in enumerate(given):  # what the short sources left: from those with more
            if left < 2:
                break
            if more:
                _, _, used = yield from self._source_share(i, npy.get(i), left, skip=windows)
                left -= used

    def _source_share(self, i: int, arr: np.ndarray | None, share: int,
                      skip: int) -> Generator[tuple[int, np.ndarray], None, tuple[int, bool, int]]:
        """Up to ``share`` tokens of source ``i`` as (i, window) pairs (no window spans two sources),
        after its first ``skip`` windows. Returns (windows given, whether the source holds more,
        tokens given); a window cut at the share, or the text tail, counts as given whole."""
        carry: list[int] = []
        windows = self._npy_windows(arr) if arr is not None else self._text_windows(self.sources[i], carry)
        k, used = 0, 0
        for w in windows:
            k += 1
            if k <= skip:
                continue
            if share - used < 2:
                return k - 1, True, used
            w = w[:share - used]
            used += w.size
            yield i, w
        if len(carry) < 2:
            return k, False, used
        if share - used < 2:
            return k, True, used
        tail = np.asarray((self.prefix + carry)[:share - used], dtype=np.int64)
        yield i, tail
        return k, False, used + tail.size

    def __iter__(self) -> Iterator[Batch]:
        """Group windows of equal length into batches; stop exactly at the token budget."""
        budget = self.budget
        self.tokens_fed = 0
        self.source_tokens = [0] * len(self.sources)
        pending: list[np.ndarray] = []
        for i, window in self._windows():
            left = budget - self.tokens_fed - sum(w.size for w in pending)
            if left <= 0:
                break
            if window.size > left:
                if not (self.whole_rows and self.sources[i].suffix.lower() == ".npy"):
                    window = window[:left]
                elif self.tokens_fed or pending:
                    break  # eval: a .npy row is one window, scored whole or not at all (the first one whole)
            if pending and (pending[0].size != window.size or len(pending) == self.spec.batch_size):
                yield self._emit(pending)
                pending = []
            pending.append(window)
            self.source_tokens[i] += int(window.size)
        if pending:
            yield self._emit(pending)
        if self.tokens_fed < 2:
            raise CalibrationError(
                f"{self.purpose} produced fewer than 2 tokens "
                f"(sources: {', '.join(str(s) for s in self.sources)}); need more text"
            )

    def _emit(self, windows: list[np.ndarray]) -> Batch:
        batch = Batch(np.stack(windows))
        self.tokens_fed += batch.tokens
        return batch
