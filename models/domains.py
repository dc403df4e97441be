"""Recipe: text of a second domain (Python documentation) for slim's cross-domain measurements.

    python -m models.domains            # writes models/work/domains/{pydoc_calib,pydoc_heldout}.txt
    python -m models.domains --calib-chars 4200000   # a larger calibration file beside it

The reST sources of the Python 3.11 documentation come from the Debian package ``python3.11-doc``
(PSF licence), fetched with ``apt-get download`` and unpacked with ``dpkg -x`` (never installed).
Calibration text is ``library/`` (the module reference), held-out text is ``tutorial/``,
``howto/`` and ``faq/``: the same kind of text, different documents. The English-prose domain is
the text the package ships (``sui_onnx/data/calib.txt`` and ``heldout.txt``, Jane Austen's
*Persuasion*). No model or dataset hub is involved.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "python3.11-doc"
CALIB_DIRS = ("library",)
HELDOUT_DIRS = ("tutorial", "howto", "faq")


def fetch(work: Path) -> Path:
    """The unpacked ``_sources`` folder of the documentation (downloaded once)."""
    root = work / "pydoc"
    sources = root / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    if sources.is_dir():
        return sources
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return sources


def gather(sources: Path, dirs: tuple[str, ...], limit: int) -> str:
    """The text of the .rst.txt files under ``dirs`` (sorted), up to ``limit`` characters."""
    parts, size = [], 0
    for d in dirs:
        for f in sorted((sources / d).rglob("*.rst.txt")):
            text = f.read_text(encoding="utf-8", errors="replace")
            parts.append(text)
            size += len(text)
            if size >= limit:
                return "\n".join(parts)[:limit]
    return "\n".join(parts)


CALIB_CHARS = 1_200_000


def build(work: Path, calib_chars: int = CALIB_CHARS, heldout_chars: int = 200_000) -> tuple[Path, Path]:
    """(calibration, held-out) text files. A calibration size other than the default is written
    to its own file (``pydoc_calib_<chars>.txt``), so the default one the tables were measured on
    is never replaced; the held-out text is the same whatever the calibration size."""
    out = work / "domains"
    out.mkdir(parents=True, exist_ok=True)
    name = "pydoc_calib.txt" if calib_chars == CALIB_CHARS else f"pydoc_calib_{calib_chars}.txt"
    calib, heldout = out / name, out / "pydoc_heldout.txt"
    if not (calib.is_file() and heldout.is_file()):
        sources = fetch(out)
        text = gather(sources, CALIB_DIRS, calib_chars)
        if len(text) < calib_chars:
            raise SystemExit(f"error: {'/'.join(CALIB_DIRS)} holds only {len(text):,} characters, "
                             f"fewer than the {calib_chars:,} asked for")
        calib.write_text(text, encoding="utf-8")
        heldout.write_text(gather(sources, HELDOUT_DIRS, heldout_chars), encoding="utf-8")
    return calib, heldout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--calib-chars", type=int, default=CALIB_CHARS,
                    help=f"characters of calibration text (default {CALIB_CHARS:,}; another size gets its own file)")
    args = ap.parse_args()
    for p in build(args.work, args.calib_chars):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
