"""The standard IWSLT'14 German-English preparation (fairseq's ``prepare-iwslt14.sh``), in Python.

What the paper's files went through (paper-notes B), step by step:

1. **Train** (``train.tags.de-en.{de,en}``): drop the lines holding ``<url>``, ``<talkid>`` or
   ``<keywords>``; delete the tags ``<title>``, ``</title>``, ``<description>``, ``</description>``
   (their text stays); Moses-tokenise (sacremoses, with Moses' XML escapes such as ``&apos;``).
2. **Clean** the pairs as Moses' ``clean-corpus-n.perl -ratio 1.5 ... 1 175`` does: whitespace
   collapsed, pairs with an empty side, a side of fewer than 1 or more than 175 words, a length
   ratio above 1.5 either way, or a word over 1,000 characters are dropped; then lowercase.
3. **Valid and test** sentences come from the ``<seg id="N">`` lines of the XML files (the tags and
   surrounding spaces removed, ``’`` replaced by ``'``), tokenised and lowercased.
4. **Split**: every 23rd training pair (1-based line numbers 23, 46, ...) is the validation set,
   the rest is train; the test set is ``IWSLT14.TED.dev2010``, ``IWSLT14.TEDX.dev2012`` and
   ``IWSLT14.TED.tst2010``, ``tst2011``, ``tst2012``, concatenated in that order.
5. **Joint BPE** (subword-nmt): ``merges`` merge operations (14,000 for the paper) learned on the
   German and English training text together, applied to every split.

Output, in the layout of the authors' files (``data/iwslt14-de-en`` in harvardnlp/var-attn):
``{train,valid,test}.{de,en}`` (tokenised, lowercased) and ``{train,valid,test}.{de,en}.bpe`` (with
``@@ `` continuation marks; removing them gives the plain file back), and ``bpe.codes``.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from varattn.errors import VarattnError
from varattn.fileio import require_new_directory, staged_directory

#: where fairseq's script downloads the archive from
DEFAULT_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
LANGS = ("de", "en")
TRAIN_FILE = "train.tags.de-en.{lang}"
#: the XML files whose segments make the test set, in fairseq's order
TEST_FILES = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
              "IWSLT14.TED.tst2012"]
XML_FILE = "{name}.de-en.{lang}.xml"
DROP_MARKERS = ("<url>", "<talkid>", "<keywords>")
STRIP_TAGS = ("<title>", "</title>", "<description>", "</description>")
VALID_EVERY = 23
MIN_WORDS, MAX_WORDS, MAX_RATIO, MAX_WORD_CHARS = 1, 175, 1.5, 1000
SEG_START = re.compile(r'<seg id="[0-9]*">\s*')
SEG_END = re.compile(r"\s*</seg>\s*")


# -- getting the archive -------------------------------------------------------------------------------
def download(url: str, dest: Path, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar (urllib); a failure leaves no partial file."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise VarattnError(f"cannot download {url}: {exc}") from None
    os.replace(tmp, dest)
    return dest


def is_url(source: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", source) is not None


def read_archive(path: Path) -> dict[str, str]:
    """The text of the archive's files that the preparation needs, by base name (nothing is extracted)."""
    wanted = {TRAIN_FILE.format(lang=lang) for lang in LANGS}
    wanted |= {XML_FILE.format(name=name, lang=lang) for name in TEST_FILES for lang in LANGS}
    found: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in found:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[name] = handle.read().decode("utf-8")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VarattnError(f"{path} is not a readable .tgz archive: {exc}") from None
    except UnicodeDecodeError as exc:
        raise VarattnError(f"{path}: a file of the archive is not UTF-8 ({exc})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise VarattnError(f"{path} is not the IWSLT'14 de-en archive: missing {', '.join(missing)}")
    return found


# -- text ----------------------------------------------------------------------------------------------
def train_text(raw: str) -> list[str]:
    """Lines of a ``train.tags`` file without the metadata lines and the title/description tags."""
    out = []
    for line in raw.splitlines():
        if any(marker in line for marker in DROP_MARKERS):
            continue
        for tag in STRIP_TAGS:
            line = line.replace(tag, "")
        out.append(line)
    return out


def xml_segments(raw: str) -> list[str]:
    """The sentences of an IWSLT XML file: its ``<seg id=...>`` lines without the tags."""
    out = []
    for line in raw.splitlines():
        if "<seg id" not in line:
            continue
        line = SEG_END.sub("", SEG_START.sub("", line))
        out.append(line.replace("\u2019", "'"))
    return out


def tokenizer(lang: str) -> Callable[[str], str]:
    """Moses tokenisation as ``tokenizer.perl -l LANG`` (XML escapes on, no aggressive hyphen splitting)."""
    from sacremoses import MosesTokenizer

    moses = MosesTokenizer(lang=lang)
    return lambda line: moses.tokenize(line, return_str=True, escape=True)


def tokenize_all(lines: list[str], lang: str, desc: str, progress: bool) -> list[str]:
    tok = tokenizer(lang)
    return [tok(line) for line in tqdm(lines, desc=desc, unit="line", disable=not progress, mininterval=1.0)]


def clean_pairs(src: list[str], tgt: list[str], min_words: int = MIN_WORDS, max_words: int = MAX_WORDS,
                ratio: float = MAX_RATIO) -> tuple[list[str], list[str]]:
    """The pairs ``clean-corpus-n.perl -ratio RATIO`` keeps, with whitespace collapsed."""
    keep_src, keep_tgt = [], []
    for s, t in zip(src, tgt):
        sw, tw = s.split(), t.split()
        if not sw or not tw:
            continue
        if not (min_words <= len(sw) <= max_words and min_words <= len(tw) <= max_words):
            continue
        if len(sw) / len(tw) > ratio or len(tw) / len(sw) > ratio:
            continue
        if any(len(w) > MAX_WORD_CHARS for w in sw + tw):
            continue
        keep_src.append(" ".join(sw))
        keep_tgt.append(" ".join(tw))
    return keep_src, keep_tgt


def learn_bpe(lines: Iterable[str], merges: int) -> str:
    """Joint BPE codes (subword-nmt, minimum pair frequency 2 as its command line) learned on ``lines``."""
    from subword_nmt.learn_bpe import learn_bpe as subword_learn

    out = io.StringIO()
    subword_learn(list(lines), out, merges, min_frequency=2)
    return out.getvalue()


def apply_bpe(codes: str, lines: list[str], desc: str, progress: bool) -> list[str]:
    from subword_nmt.apply_bpe import BPE

    bpe = BPE(io.StringIO(codes))
    return [bpe.process_line(line) for line in tqdm(lines, desc=desc, unit="line", disable=not progress,
                                                    mininterval=1.0)]


# -- the whole preparation -----------------------------------------------------------------------------
def prepare(source: str, outdir: str | os.PathLike[str], merges: int = 14000, progress: bool = True) -> dict:
    """Prepare IWSLT'14 de-en from ``source`` (a .tgz path or URL) into ``outdir``; returns line counts.

    ``outdir`` must not exist or be empty. Everything is written into a temporary directory next
    to it and moved into place at the end, so a failure leaves nothing behind.
    """
    out = require_new_directory(outdir)
    if merges < 1:
        raise VarattnError(f"the number of BPE merges must be positive, got {merges}")
    files = None
    if not is_url(source):  # a local archive is checked before anything is written
        if not Path(source).is_file():
            raise VarattnError(f"archive not found: {source}")
        files = read_archive(Path(source))
    with staged_directory(out) as work:
        if files is None:
            files = read_archive(download(source, work / "de-en.tgz", progress))
        plain: dict[tuple[str, str], list[str]] = {}
        train = {}
        for lang in LANGS:
            train[lang] = tokenize_all(train_text(files[TRAIN_FILE.format(lang=lang)]), lang, f"train.{lang}",
                                       progress)
        if len(train["de"]) != len(train["en"]):
            raise VarattnError(f"train.tags.de-en.de has {len(train['de'])} text lines but train.tags.de-en.en "
                               f"has {len(train['en'])}")
        src, tgt = clean_pairs(train["de"], train["en"])
        for lang, lines in (("de", src), ("en", tgt)):
            lines = [line.lower() for line in lines]
            plain[("valid", lang)] = [x for k, x in enumerate(lines, start=1) if k % VALID_EVERY == 0]
            plain[("train", lang)] = [x for k, x in enumerate(lines, start=1) if k % VALID_EVERY != 0]
            test = []
            for name in TEST_FILES:
                segments = xml_segments(files[XML_FILE.format(name=name, lang=lang)])
                test += [line.lower() for line in tokenize_all(segments, lang, f"{name}.{lang}", progress)]
            plain[("test", lang)] = test
        for split in ("test",):
            if len(plain[(split, "de")]) != len(plain[(split, "en")]):
                raise VarattnError(f"the {split} XML files have {len(plain[(split, 'de')])} German but "
                                   f"{len(plain[(split, 'en')])} English segments")
        codes = learn_bpe(plain[("train", "de")] + plain[("train", "en")], merges)
        (work / "bpe.codes").write_text(codes, encoding="utf-8")
        counts = {}
        for (split, lang), lines in sorted(plain.items()):
            (work / f"{split}.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
            pieces = apply_bpe(codes, lines, f"bpe {split}.{lang}", progress)
            (work / f"{split}.{lang}.bpe").write_text("".join(x + "\n" for x in pieces), encoding="utf-8")
            counts[split] = len(lines)
        (work / "de-en.tgz").unlink(missing_ok=True)
    return counts
