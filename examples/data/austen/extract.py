"""Rebuilds `paragraphs.tsv.gz` from the Debian package r-cran-janeaustenr.

    apt-get install r-cran-janeaustenr     # or: apt-get download, dpkg-deb -x
    python examples/data/austen/extract.py [/usr/lib/R/site-library/janeaustenr]

The package keeps the six novels as R character vectors (one entry per line of
the Project Gutenberg text) in R's lazy-load database `data/Rdata.rdb`, indexed
by `data/Rdata.rdx`. R itself is not needed: the reader below understands the
few parts of R's serialization format (XDR, version 2 or 3) that those two
files use. Each novel's paragraphs (lines joined between blank lines) of 12 to
80 words are kept, chapter headings are not, and `PER_NOVEL` of them are taken
evenly spaced through the book, so that every part of each novel is present.
"""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from pathlib import Path

PER_NOVEL = 250
NOVELS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
HERE = Path(__file__).resolve().parent


class _Reader:
    """Just enough of R's XDR unserialize for character vectors and lists."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not R's XDR serialization format")
        self.data, self.pos, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            length = self.int()  # of the native encoding's name, skipped
            self.pos += length

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NULL
            return None
        if kind == 255:  # a reference to an earlier symbol
            return self.refs[(flags >> 8 or self.int()) - 1]
        if kind == 1:  # symbol
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 9:  # one string (CHARSXP); length -1 is NA
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.pos : self.pos + n].decode("utf-8")
            self.pos += n
            return text
        if kind == 2:  # pairlist: attributes (used here only as names)
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            head, rest = self.item(), self.item()
            return {tag: head, **(rest or {})}
        if kind in (10, 13, 16, 19):  # logical, integer, character, list
            n = self.int()
            if kind in (10, 13):
                values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
                self.pos += 4 * n
            else:
                values = [self.item() for _ in range(n)]
            attributes = self.item() if has_attr else {}
            names = attributes.get("names")
            return dict(zip(names, values, strict=True)) if names else values
        raise ValueError(f"R type {kind} is not handled")


def read_novels(package: Path) -> dict[str, list[str]]:
    """Each novel's lines, from the package's lazy-load database."""
    data = package / "data"
    index = _Reader(gzip.decompress((data / "Rdata.rdx").read_bytes())).item()
    database = (data / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        # Each entry: a 4-byte length, then the zlib-compressed serialization.
        chunk = database[offset + 4 : offset + length]
        novels[name] = _Reader(zlib.decompress(chunk)).item()
    return novels


def paragraphs(lines: list[str]) -> list[str]:
    out, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return [p for p in out if 12 <= len(p.split()) <= 80 and not p.isupper()]


def main(package: Path) -> None:
    novels = read_novels(package)
    rows = []
    for name, title in NOVELS.items():
        found = paragraphs(novels[name])
        step = len(found) / PER_NOVEL
        rows += [f"{title}\t{found[int(i * step)]}" for i in range(PER_NOVEL)]
    text = ("\n".join(rows) + "\n").encode("utf-8")
    # mtime=0: the same bytes each time it is rebuilt.
    (HERE / "paragraphs.tsv.gz").write_bytes(gzip.compress(text, mtime=0))
    print(f"{len(rows)} paragraphs written to {HERE / 'paragraphs.tsv.gz'}")


if __name__ == "__main__":
    default = "/usr/lib/R/site-library/janeaustenr"
    main(Path(sys.argv[1] if len(sys.argv) > 1 else default))
