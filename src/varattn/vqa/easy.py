"""easy-VQA (the ``easy-vqa`` package): 64x64 images of one coloured shape, 13 answers.

The package ships 4,000 training images with 38,575 questions and 1,000 test images with 9,673
questions. Each image is decoded once into a uint8 array cached as ``.npz`` (no pickle) in the
cache directory (``$VARATTN_CACHE``, else ``~/.cache/varattn``), so training never decodes a PNG
twice; a slice (the first ``limit`` questions) caches only the images it uses.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varattn.errors import VarattnError
from varattn.extras import optional_import

SPLITS = ("train", "test")
CACHE_FORMAT = "v1"


def cache_dir() -> Path:
    """``$VARATTN_CACHE``, else ``~/.cache/varattn``."""
    return Path(os.environ.get("VARATTN_CACHE") or Path.home() / ".cache" / "varattn")


def _package():
    return optional_import("easy_vqa", "vqa", "easy-VQA")


@dataclass
class EasySplit:
    """One split: questions, answers (strings), image ids, and the images they need.

    Attributes:
        texts, answers, image_ids: one entry per question.
        pixels: ``(N, 64, 64, 3)`` uint8 images, row ``k`` is ``pixel_ids[k]``.
        pixel_ids: the image id of every row of ``pixels``.
    """

    texts: list[str]
    answers: list[str]
    image_ids: list[int]
    pixels: np.ndarray
    pixel_ids: list[int]


def answer_list() -> list[str]:
    """easy-VQA's 13 answers, in the package's order."""
    return list(_package().get_answers())


def _decode(paths: dict[int, str], ids: list[int]) -> np.ndarray:
    optional_import("PIL", "vqa", "reading easy-VQA images")
    from PIL import Image
    from tqdm import tqdm

    out = np.zeros((len(ids), 64, 64, 3), dtype=np.uint8)
    quiet = True if len(ids) < 500 else None  # None: tqdm stays quiet when stderr is not a terminal
    for row, key in enumerate(tqdm(ids, desc="decoding easy-VQA images", leave=False, disable=quiet)):
        with Image.open(paths[key]) as im:
            out[row] = np.asarray(im.convert("RGB").resize((64, 64)))
    return out


def _cached_pixels(split: str, ids: list[int], paths: dict[int, str], directory: Path) -> np.ndarray:
    """The images ``ids`` from the cache, decoding and caching them on first use."""
    name = f"easy-vqa-{CACHE_FORMAT}-{split}-{len(ids)}-{ids[-1] if ids else 0}.npz"
    path = directory / name
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                if f["ids"].tolist() == ids:
                    return f["pixels"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    pixels = _decode(paths, ids)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ids=np.asarray(ids, dtype=np.int64), pixels=pixels)
        os.replace(tmp, path)
    except OSError:
        pass  # no writable cache: decode again next time
    return pixels


def load_split(split: str, limit: int | None = None, directory: Path | None = None) -> EasySplit:
    """The questions of ``split`` (``train`` or ``test``), the first ``limit`` of them if given."""
    if split not in SPLITS:
        raise VarattnError(f"unknown easy-VQA split {split!r}; valid: {', '.join(SPLITS)}")
    pkg = _package()
    if split == "train":
        texts, answers, image_ids = pkg.get_train_questions()
        paths = pkg.get_train_image_paths()
    else:
        texts, answers, image_ids = pkg.get_test_questions()
        paths = pkg.get_test_image_paths()
    if limit is not None:
        texts, answers, image_ids = texts[:limit], answers[:limit], image_ids[:limit]
    ids = sorted(set(int(i) for i in image_ids))
    pixels = _cached_pixels(split, ids, paths, directory or cache_dir())
    return EasySplit(list(texts), list(answers), [int(i) for i in image_ids], pixels, ids)
