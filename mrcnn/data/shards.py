"""The shard format and its random-access reader, `ShardDataset`.

A split folder (`data/shards/train/`) holds:

    shard-000000.tar ...  plain POSIX (ustar) tars, WebDataset-style: one sample is three
                          consecutive members sharing a key (the COCO image id, 12 digits)
                              <key>.json           metadata, boxes, labels (below)
                              <key>.png | .jpg     the resized, *unpadded* image
                              <key>.minimasks.npy  uint8 [N, ceil(m*m/8)] bit-packed mini-masks
    shard-000000.json     per-shard record written after the tar: its sha256 and size, the byte
                          range of every member, the records it skipped, and the fingerprint of
                          its inputs (what lets an interrupted build resume)
    index.npy             int64 [num_samples, 8], the concatenated per-shard byte ranges
                          (`INDEX_COLUMNS`), so `ds[i]` is three `pread`s and no tar parsing
    manifest.json         counts, per-shard checksums, class map, the parameters used
    report.json           every skipped or converted record, with its reason
    annotations.json      (val, in object storage only) the COCO annotations the split was
                          built from, for validation where the raw folder is out of reach

Damage. A split whose files are not what its manifest says raises `ShardReadError` (a
`ValueError`, so a stage prints it as one line) naming the file and saying how to rebuild it;
no sample is ever skipped silently. Opening checks the structure (manifest, index, every shard
present at its recorded size, every index range inside its shard); `verify()` also checks each
file's sha256 against the manifest (the train and evaluate stages run it before any work); a
sample whose bytes do not decode (its json, image or mini-masks) raises it on reading.

Why tar: it streams (sequential reads, any tool can list or extract it, the WebDataset loader
reads it as is) and needs no dependency, while the index gives random access for `ds[i]`.

Per-sample json: image_id, file_name, original_size (h, w), scale, window (y1, x1, y2, x2),
boxes [[x1, y1, x2, y2], ...] in the padded frame, labels (1..K), category_ids,
annotation_ids, crowd_boxes (padded frame), converted (reason or null), and for keypoint data
keypoints [[[x, y, v] * K] * N] in the padded frame (v: 0 unlabelled, 1 occluded, 2 visible).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mrcnn.data import shard_checks as checks
from mrcnn.data import storage
from mrcnn.data.class_map import read_class_map
from mrcnn.data.layout import MANIFEST
from mrcnn.data.minimask import unpack_mini_masks
from mrcnn.data.shard_checks import REBUILD, ShardReadError

try:  # deprecated since torchvision 0.29 (TorchCodec supersedes it), but ~30% faster than PIL
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as _tv_decode_image
except ImportError:  # a torchvision without image decoders: Pillow does the job
    _tv_decode_image = None

FORMAT = checks.FORMAT
FORMAT_VERSION = checks.FORMAT_VERSION
INDEX_COLUMNS = (
    "shard",
    "image_id",
    "json_offset",
    "json_size",
    "image_offset",
    "image_size",
    "masks_offset",
    "masks_size",
)
INDEX = checks.INDEX
REPORT = "report.json"
GROUND_TRUTH = "annotations.json"


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


@dataclass
class Sample:
    """One training / evaluation sample in the padded S x S frame.

    image:          uint8 [S, S, 3] resized + zero-padded (bottom / right); from ShardDataset
                    a view of a channels-first buffer, so `collate` needs no transpose copy
    image_id:       source COCO image id
    window:         (y1, x1, y2, x2) of the real image inside the padded frame
    scale:          original -> padded frame factor
    original_size:  (h, w) of the source image
    boxes:          float32 [N, 4] xyxy in the padded frame (x2 / y2 exclusive)
    labels:         int64 [N] contiguous labels 1..K
    mini_masks:     bool [N, m, m] each mask cut to its box, resized to m x m
    crowd_boxes:    float32 [C, 4] crowd regions (not targets), padded frame
    file_name:      the source image file
    keypoints:      float32 [N, K, 3] (x, y, visibility) in the padded frame, or None for data
                    without keypoints
    """

    image: np.ndarray
    image_id: int
    window: tuple[int, int, int, int]
    scale: float
    original_size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    mini_masks: np.ndarray
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    file_name: str = ""
    keypoints: np.ndarray | None = None


def encode_masks(packed: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(packed, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """Write `(name, data)` members into a deterministic ustar file (mtime 0, root owner)
    -> the (offset, size) of each member's data."""
    ranges = []
    with (
        open(path, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tf,
    ):
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            header = info.tobuf(tarfile.USTAR_FORMAT, tf.encoding, tf.errors)
            ranges.append((tf.offset + len(header), len(data)))
            tf.addfile(info, io.BytesIO(data))
        tf.close()
        f.flush()
        os.fsync(f.fileno())
    return ranges


def decode_chw(data: bytearray) -> np.ndarray:
    """Encoded PNG / JPEG -> uint8 [3, h, w] (channels first, as the model takes it)."""
    if _tv_decode_image is not None:
        if data[:8] == checks.PNG_SIGNATURE:
            checks.check_png(data)  # torchvision's PNG decoder crashes on a corrupt one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tensor = _tv_decode_image(
                torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        return tensor.numpy()
    with Image.open(io.BytesIO(data)) as im:
        return np.stack([np.asarray(band) for band in im.convert("RGB").split()])


class ShardDataset(torch.utils.data.Dataset):
    """Random access to one split's shards: `len(ds)`, `ds[i] -> Sample`.

    path: a split folder written by `pipeline.shards` (e.g. `data/shards/train`), or the URL of
        one in an object store (`s3://bucket/prefix/train`, any scheme `fsspec` has a driver
        for; credentials from the environment, see `mrcnn.data.storage`).
    cache_dir: for a URL, a local folder where each shard is downloaded whole on first use and
        read from then on (one copy per node; None reads every sample with a ranged GET).
    storage_options: extra `fsspec` options for a URL (e.g. `{"anon": True}`).

    Attributes from the manifest: `image_size`, `mini_mask_shape`, `num_classes` (K + 1),
    `class_names` (index 0 = "background"), `manifest` (the whole json). The samples, their
    order and their bytes are the same wherever the split is read from.

    Local reads are `os.pread` on file descriptors opened lazily per process and remote
    filesystems are made lazily per process, so one instance can be shared by DataLoader
    workers (forked or spawned).
    """

    def __init__(
        self,
        path: str | Path,
        cache_dir: str | Path | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.root: str | Path
        if storage.is_url(path):
            self.root = str(path).rstrip("/")
            self._reader: storage.LocalSplit | storage.RemoteSplit = storage.RemoteSplit(
                self.root, cache_dir, storage_options
            )
        else:
            self.root = Path(str(path).removeprefix("file://"))
            self._reader = storage.LocalSplit(self.root)
        try:
            manifest_bytes = self._reader.read(MANIFEST)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {MANIFEST} in {self.root}: pass a finished split folder such as "
                "data/shards/train (run `python -m pipeline.shards` first)"
            ) from None
        self.manifest: dict[str, Any] = checks.read_manifest(
            manifest_bytes, f"{self.root}/{MANIFEST}"
        )
        shards = self.manifest["shards"]
        self.shard_files = [storage.join(self.root, s["file"]) for s in shards]
        self.index = self._read_index(shards)
        if isinstance(self._reader, storage.RemoteSplit):
            self._reader.bind(manifest_bytes, shards)
        else:
            self._reader = storage.LocalSplit(self.root, [s["file"] for s in shards])
            checks.check_local_shards(self.root, shards)
        self.image_size = int(self.manifest["image_size"])
        self.mini_mask_shape = int(self.manifest["mini_mask_shape"])
        self.num_classes = int(self.manifest["num_classes"])
        self.class_names = list(self.manifest["class_names"])
        # {label: ClassInfo(category_id, name)}; empty for shards without categories
        try:
            raw_map = self.manifest.get("class_map") or {}
            self.class_map = read_class_map(raw_map, self.num_classes if raw_map else None)
        except (ValueError, TypeError, AttributeError) as e:
            raise ShardReadError(f"{self.root}/{MANIFEST}: {e}; {REBUILD}") from None

    def _read_index(self, shards: list[dict[str, Any]]) -> np.ndarray:
        try:
            data = self._reader.read(INDEX)
        except FileNotFoundError:
            raise ShardReadError(f"{self.root}/{INDEX} is missing; {REBUILD}") from None
        return checks.read_index(data, [s["bytes"] for s in shards], f"{self.root}/{INDEX}")

    def verify(self) -> None:
        """Check every file of a local split against the sha256 its manifest records (index and
        shards; about 1 s per GB) -> None, or `ShardReadError` naming the first that differs.
        A split at a URL is checked when a shard is cached (`cache_dir`), not here."""
        if isinstance(self.root, Path):
            checks.verify_files(self.root, self.manifest)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> Sample:
        meta, image_bytes, masks_bytes = self.read_raw(i)
        try:
            return self.decode(meta, image_bytes, masks_bytes)
        except Exception as e:
            raise self._damaged(i, "does not decode", e) from None

    def read_meta(self, i: int) -> dict[str, Any]:
        """Only the sample's json (no image decoding): cheap, e.g. for statistics."""
        row = self._row(i)
        (meta,) = self._pread(i, int(row[0]), [(int(row[2]), int(row[3]))])
        try:
            return checks.sample_meta(meta)
        except ValueError as e:
            raise self._damaged(i, "cannot be read", e) from None

    def read_raw(self, i: int) -> tuple[dict[str, Any], bytearray, bytearray]:
        """(metadata, encoded image, .npy mini-masks) of sample `i`, undecoded."""
        row = [int(v) for v in self._row(i)]
        meta, image, masks = self._pread(
            i, row[0], [(row[2], row[3]), (row[4], row[5]), (row[6], row[7])]
        )
        try:
            return checks.sample_meta(meta), image, masks
        except ValueError as e:
            raise self._damaged(i, "cannot be read", e) from None

    def _pread(self, i: int, shard: int, ranges: list[tuple[int, int]]) -> list[bytearray]:
        """The byte ranges of sample `i`. A local file shorter than its index says is damage
        (ShardReadError); a remote read's errors (network, a changed upload) stay what they are."""
        try:
            return self._reader.pread(shard, ranges)
        except OSError as e:
            if isinstance(self._reader, storage.RemoteSplit):
                raise
            raise self._damaged(i, "cannot be read", e) from None

    def _damaged(self, i: int, what: str, error: Exception) -> ShardReadError:
        """The error for sample `i` whose bytes `what` (its shard file named)."""
        if isinstance(error, ShardReadError):
            return error
        shard = self.shard_files[int(self.index[i][0])]
        return ShardReadError(
            f"{shard}: sample {i} (image {int(self.index[i][1])}) {what} "
            f"({type(error).__name__}: {checks.first_line(error)}); {REBUILD}"
        )

    def decode(self, meta: dict[str, Any], image_bytes: bytearray, masks_bytes: bytes) -> Sample:
        s = self.image_size
        chw = decode_chw(image_bytes)  # uint8 [3, h', w']
        y1, x1, y2, x2 = meta["window"]
        if chw.shape[1:] != (y2 - y1, x2 - x1):
            raise ValueError(
                f"image {meta['image_id']}: decoded {tuple(chw.shape[1:])} "
                f"!= window {meta['window']}"
            )
        # numpy, not torch, for the copies: tiny torch ops go multi-threaded (OpenMP) and stall
        # when the training step holds the other cores.
        padded = np.zeros((3, s, s), dtype=np.uint8)
        padded[:, y1:y2, x1:x2] = chw
        packed = np.load(io.BytesIO(masks_bytes), allow_pickle=False)
        mini = unpack_mini_masks(packed, self.mini_mask_shape).view(bool)
        n = len(meta["labels"])
        return Sample(
            # A [S, S, 3] view of the CHW buffer: collate stacks it back to CHW with no copy.
            image=padded.transpose(1, 2, 0),
            image_id=int(meta["image_id"]),
            window=(y1, x1, y2, x2),
            scale=float(meta["scale"]),
            original_size=(int(meta["original_size"][0]), int(meta["original_size"][1])),
            boxes=np.asarray(meta["boxes"], dtype=np.float32).reshape(n, 4),
            labels=np.asarray(meta["labels"], dtype=np.int64),
            mini_masks=mini.reshape(n, self.mini_mask_shape, self.mini_mask_shape),
            crowd_boxes=np.asarray(meta.get("crowd_boxes", []), np.float32).reshape(-1, 4),
            file_name=meta.get("file_name", ""),
            keypoints=(
                np.asarray(meta["keypoints"], np.float32).reshape(n, -1, 3)
                if "keypoints" in meta
                else None
            ),
        )

    def _row(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        return self.index[i]

    def close(self) -> None:
        self._reader.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
