"""Precomputed region features (bottom-up attention, up to 36 regions x 2048 per image), read lazily.

Three layouts, as their users hold them:

- **HDF5** (``.h5``/``.hdf5``): a features dataset ``image_features`` (or ``features``) of shape
  ``(N, K, D)``, with ``num_boxes`` (or ``num_bbox``) when images have fewer than ``K`` regions, or
  flat ``(total, D)`` with ``pos_boxes`` ``(N, 2)`` (start, end); the image ids in a dataset
  ``image_ids`` (or ``ids``) or in a JSON sidecar ``STEM_imgid2idx.json`` ({id: row}); boxes, when
  present, in ``image_bb`` (or ``boxes``/``bbox``). Pickled sidecars are refused (never unpickled).
- **TSV** (``.tsv``): the original bottom-up-attention files, one image per line with the fields
  ``image_id image_w image_h num_boxes boxes features``, arrays base64-encoded float32. Opening
  scans the file once for line offsets; a record is read when asked for.
- **A directory of npz files**, one per image (``123.npz`` or ``COCO_val2014_000000000123.jpg.npz``),
  with the features in ``x`` (or ``features``/``feat``), ``(K, D)`` or ``(D, K)``, and boxes in
  ``bbox`` (or ``boxes``).

Only an index (id -> row, offset or file) is kept in memory; features are read per batch.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

from varattn.errors import VarattnError
from varattn.extras import optional_import

FEATURE_NAMES = ("image_features", "features", "feats", "x")
ID_NAMES = ("image_ids", "image_id", "ids")
COUNT_NAMES = ("num_boxes", "num_bbox")
BOX_NAMES = ("image_bb", "boxes", "bbox")
TSV_FIELDS = 6  # image_id, image_w, image_h, num_boxes, boxes, features


def _image_key(value):
    """Image ids as ints where they are integers (COCO), else strings."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


class FeatureStore:
    """Region features per image id: ``get(id) -> (features (k, D) float32, boxes (k, 4) or None)``."""

    path: Path
    dim: int

    def has(self, key) -> bool:
        raise NotImplementedError

    def get(self, key) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def check_dim(self, expected: int | None) -> None:
        if expected is not None and self.dim != expected:
            raise VarattnError(f"{self.path}: region features are {self.dim} wide, but the model expects {expected} "
                               "(model.feature_dim)")

    def _missing(self, key):
        raise VarattnError(f"{self.path}: no features for image {key}")


class HDF5Features(FeatureStore):
    def __init__(self, path: Path):
        h5py = optional_import("h5py", "vqa", "reading HDF5 feature files")
        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise VarattnError(f"{path} is not a readable HDF5 file ({exc})") from None
        names = set(self.file.keys())
        feat = next((n for n in FEATURE_NAMES if n in names), None)
        if feat is None:
            raise VarattnError(f"{path}: no features dataset (looked for {', '.join(FEATURE_NAMES)}; "
                               f"found {', '.join(sorted(names)) or 'nothing'})")
        self.features = self.file[feat]
        if self.features.ndim not in (2, 3):
            raise VarattnError(f"{path}: {feat} must be (N, K, D) or (total, D), got shape {self.features.shape}")
        self.dim = int(self.features.shape[-1])
        self.spans = self.file["pos_boxes"][()] if "pos_boxes" in names else None
        if self.features.ndim == 2 and self.spans is None:
            raise VarattnError(f"{path}: flat {feat} {self.features.shape} needs pos_boxes (N, 2)")
        count = next((n for n in COUNT_NAMES if n in names), None)
        self.counts = self.file[count][()].astype(np.int64) if count else None
        box = next((n for n in BOX_NAMES if n in names), None)
        self.boxes = self.file[box] if box else None
        n = len(self.spans) if self.spans is not None else int(self.features.shape[0])
        self.rows = self._read_ids(names, n)

    def _read_ids(self, names: set, n: int) -> dict:
        ids = next((k for k in ID_NAMES if k in names), None)
        if ids is not None:
            values = self.file[ids][()]
            if len(values) != n:
                raise VarattnError(f"{self.path}: {ids} has {len(values)} entries for {n} images")
            return {_image_key(v): row for row, v in enumerate(values)}
        stem = self.path.name.split(".")[0]
        sidecar = self.path.with_name(f"{stem}_imgid2idx.json")
        if sidecar.is_file():
            from varattn.fileio import load_json

            mapping = load_json(sidecar)
            if not isinstance(mapping, dict):
                raise VarattnError(f"{sidecar} must map image ids to rows")
            bad = [r for r in mapping.values() if not isinstance(r, int) or not 0 <= r < n]
            if bad:
                raise VarattnError(f"{sidecar}: row {bad[0]!r} is outside the {n} images of {self.path}")
            return {_image_key(k): r for k, r in mapping.items()}
        pickled = self.path.with_name(f"{stem}_imgid2idx.pkl")
        if pickled.is_file():
            raise VarattnError(f"{pickled} is a pickle, which varattn never opens; write it as JSON once "
                               f"({sidecar.name}: {{image_id: row}})")
        raise VarattnError(f"{self.path}: no image ids (a dataset {' or '.join(ID_NAMES)}, or {sidecar.name})")

    def has(self, key) -> bool:
        return key in self.rows

    def get(self, key):
        row = self.rows.get(key)
        if row is None:
            self._missing(key)
        if self.spans is not None:
            start, end = (int(v) for v in self.spans[row])
            feats = self.features[start:end]
            boxes = self.boxes[start:end] if self.boxes is not None else None
        else:
            k = int(self.counts[row]) if self.counts is not None else self.features.shape[1]
            feats = self.features[row, :k]
            boxes = self.boxes[row, :k] if self.boxes is not None else None
        return np.asarray(feats, dtype=np.float32), None if boxes is None else np.asarray(boxes, dtype=np.float32)


class TSVFeatures(FeatureStore):
    def __init__(self, path: Path):
        from tqdm import tqdm

        self.path = path
        self.offsets: dict = {}
        self.dim = 0
        size = path.stat().st_size
        with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {path.name}",
                                         leave=False, disable=True if size < (64 << 20) else None) as bar:
            offset, line_no = 0, 0
            for line in f:
                line_no += 1
                if line.strip():
                    fields = line.rstrip(b"\r\n").split(b"\t")
                    if len(fields) != TSV_FIELDS:
                        raise VarattnError(f"{path}, line {line_no}: {len(fields)} tab-separated fields, expected "
                                           f"{TSV_FIELDS} (image_id image_w image_h num_boxes boxes features)")
                    self.offsets[_image_key(fields[0])] = offset
                    if not self.dim:
                        self.dim = self._parse(fields, f"line {line_no}")[0].shape[1]
                offset += len(line)
                bar.update(len(line))
        if not self.offsets:
            raise VarattnError(f"{path} holds no feature records")

    def _parse(self, fields: list[bytes], where: str):
        try:
            k = int(fields[3])
            feats = np.frombuffer(base64.b64decode(fields[5]), dtype=np.float32)
            boxes = np.frombuffer(base64.b64decode(fields[4]), dtype=np.float32)
            if k < 1 or feats.size % k or boxes.size != 4 * k:
                raise ValueError(f"{k} boxes do not divide {feats.size} feature values / {boxes.size} box values")
        except ValueError as exc:
            raise VarattnError(f"{self.path}, {where}: malformed feature record ({exc})") from None
        return feats.reshape(k, -1), boxes.reshape(k, 4)

    def has(self, key) -> bool:
        return key in self.offsets

    def get(self, key):
        offset = self.offsets.get(key)
        if offset is None:
            self._missing(key)
        with open(self.path, "rb") as f:
            f.seek(offset)
            fields = f.readline().rstrip(b"\r\n").split(b"\t")
        feats, boxes = self._parse(fields, f"image {key}")
        if feats.shape[1] != self.dim:
            raise VarattnError(f"{self.path}: image {key} has {feats.shape[1]}-wide features, others {self.dim}")
        return feats.copy(), boxes.copy()


class NPZFeatures(FeatureStore):
    def __init__(self, path: Path, expected_dim: int | None = None):
        self.path = path
        self.files = {}
        for file in sorted(path.glob("*.npz")):
            digits = re.findall(r"\d+", file.name.split(".")[0])
            key = _image_key(digits[-1]) if digits else file.name.split(".")[0]
            self.files[key] = file
        if not self.files:
            raise VarattnError(f"{path} holds no .npz feature files")
        first = self._read(next(iter(self.files.values())))[0]
        self.dim = expected_dim if expected_dim in first.shape else max(first.shape)

    def _read(self, file: Path):
        try:
            with np.load(file, allow_pickle=False) as f:
                name = next((n for n in ("x", "features", "feat") if n in f.files), None)
                if name is None:
                    raise VarattnError(f"{file}: no features array (x, features or feat)")
                feats = f[name]
                box = next((n for n in ("bbox", "boxes") if n in f.files), None)
                boxes = f[box] if box else None
        except (OSError, ValueError) as exc:
            raise VarattnError(f"{file} is not a readable npz file ({exc})") from None
        if feats.ndim != 2:
            raise VarattnError(f"{file}: features must be 2-D, got shape {feats.shape}")
        return feats, boxes

    def has(self, key) -> bool:
        return key in self.files

    def get(self, key):
        file = self.files.get(key)
        if file is None:
            self._missing(key)
        feats, boxes = self._read(file)
        if feats.shape[1] != self.dim and feats.shape[0] == self.dim:
            feats = feats.T  # stored (D, K)
        if feats.shape[1] != self.dim:
            raise VarattnError(f"{file}: region features are {feats.shape[1]} wide, but the model expects {self.dim} "
                               "(model.feature_dim)")
        return np.ascontiguousarray(feats, dtype=np.float32), None if boxes is None else np.asarray(boxes, np.float32)


def open_features(path: str | Path, expected_dim: int | None = None) -> FeatureStore:
    """Open a feature file or directory by its layout; ``expected_dim`` is checked when given."""
    path = Path(path)
    if path.is_dir():
        store = NPZFeatures(path, expected_dim)
    elif not path.is_file():
        raise VarattnError(f"feature file not found: {path}")
    elif path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        store = HDF5Features(path)
    elif path.suffix.lower() == ".tsv":
        store = TSVFeatures(path)
    else:
        raise VarattnError(f"{path}: unknown feature layout (expected .h5/.hdf5, .tsv or a directory of .npz files)")
    store.check_dim(expected_dim)
    return store

