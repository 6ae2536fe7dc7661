"""Image features on disk, so that reopening an image in a later session skips the encoder.

An :class:`EmbeddingStore` is a folder. Each entry, one image at one model and SAM input
size, is a subfolder named by a hash of that key and holds pieces, each a zarr group (zarr
v2 format, which zarr 2 and 3 both read) of named arrays::

    <store>/<entry>/base/            the encoder prefix (the blocks before the concept's)
    <store>/<entry>/clip/            CLIP's patch features
    <store>/<entry>/concept-<hash>/  one concept's embedding and similarity grid

What goes into the pieces is the caller's (``recent_images.py``); the store only keeps them
safely:
- a piece is written in a temporary folder and renamed into place, so a crash mid-write
  leaves no piece, never half of one (a killed writer's temporary folder is removed the
  next time a store is opened on the folder);
- each piece records its key, and each array its dtype, shape and xxh3 checksum: a piece
  that does not match them (truncated, altered, another key) is removed and read as absent,
  and no error from reading or writing reaches the caller: a store that cannot be written
  (a read-only folder, a full disk) logs one warning and is only read from then on;
- with ``max_gb`` the least recently used entries go first when the store outgrows it;
  without it the store grows (vit_b + ViT-B-16 at 1024 px: 4.2 MB per concept and image,
  2.1 MB per image, 12.6 MB more per image for models whose concept-conditioned blocks
  start later): :meth:`EmbeddingStore.clear` or deleting the folder empties it.

The key's model part is :func:`model_fingerprint`: the names and configuration of the model
and a hash of every weight the stored features depend on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import weakref
from pathlib import Path

import numpy as np
import torch
import xxhash

from .._io import _process_alive

logger = logging.getLogger(__name__)

# Written into every piece; a piece of another format version is read as absent.
FORMAT_VERSION = 1
# Pieces are built here, inside the store so that renaming them into place is atomic.
_TEMPORARY = ".writing"
# Weights that only decode prompts: no stored feature depends on them.
_DECODER_WEIGHTS = ("sam.prompt_encoder.", "sam.mask_decoder.")
# Per model: (weights_version, hash of its weights), since hashing vit_b's and CLIP's weights takes a while.
_WEIGHT_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_fingerprint(model) -> str:
    """What a model's image features depend on, as a 32-digit hex string.

    The SAM and CLIP names, the configuration, the precision, and every weight and buffer
    except the prompt encoder's and mask decoder's (SAM's image encoder with its adapters,
    CLIP's towers). The weights are hashed once per ``model.weights_version``, which every
    change of weights through the model's own methods (loading adapters, training) raises.
    """
    cached = _WEIGHT_HASHES.get(model)
    if cached is None or cached[0] != model.weights_version:
        cached = (model.weights_version, _hash_weights(model))
        _WEIGHT_HASHES[model] = cached
    described = json.dumps([model.sam_name, model.clip_name, model.config.to_json(), model.precision, cached[1]])
    return xxhash.xxh3_128_hexdigest(described.encode())


def _hash_weights(model) -> str:
    digest = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(_DECODER_WEIGHTS):
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_raw(tensor))
    return digest.hexdigest()


def _raw(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's bytes as a flat uint8 array (bfloat16 included, which numpy lacks)."""
    return tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """How a tensor of ``dtype`` is stored: numpy has no bfloat16, so those are stored as their bits (uint16)."""
    return np.dtype(np.uint16) if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype


class EmbeddingStore:
    """A folder of image features keyed by image, model and input size (see the module's doc).

    Args:
        path: the folder, made if missing.
        max_gb: the most the store may hold, in GB (10**9 bytes); None: no bound.
    """

    def __init__(self, path: str | os.PathLike, max_gb: float | None = None) -> None:
        if max_gb is not None and max_gb <= 0:
            raise ValueError(f"max_gb must be positive or None, got {max_gb}.")
        self.path = Path(path)
        self.max_bytes = None if max_gb is None else int(max_gb * 1e9)
        self.writable = True
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
        except OSError as err:
            self._stop_writing(err)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, max_gb={None if self.max_bytes is None else self.max_bytes / 1e9})"

    @staticmethod
    def entry(image_digest: str, fingerprint: str, image_size: int) -> dict:
        """The key of one image's features: its content digest, the model's fingerprint, the SAM input side."""
        return {"image": image_digest, "model": fingerprint, "size": int(image_size)}

    def _folder(self, entry: dict) -> Path:
        return self.path / xxhash.xxh3_128_hexdigest(json.dumps(entry, sort_keys=True).encode())

    def has(self, entry: dict, piece: str) -> bool:
        return (self._folder(entry) / piece).is_dir()

    # ---------------------------------------------------------------- reading
    def read(self, entry: dict, piece: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """A piece's arrays (CPU tensors) and its attributes; None if absent or not valid (a bad one is removed)."""
        folder = self._folder(entry) / piece
        if not folder.is_dir():
            return None
        try:
            arrays, attributes = self._read(folder, entry, piece)
        except Exception as err:  # noqa: BLE001 - whatever a damaged piece raises, it is only a cache miss
            self.discard(entry, piece, err)
            return None
        try:
            os.utime(folder.parent)  # recently used: evicted last
        except OSError:
            pass
        return arrays, attributes

    @staticmethod
    def _read(folder: Path, entry: dict, piece: str) -> tuple[dict[str, torch.Tensor], dict]:
        import zarr

        group = zarr.open_group(str(folder), mode="r")
        attributes = dict(group.attrs)
        if attributes.get("format") != FORMAT_VERSION or attributes.get("key") != entry or \
                attributes.get("piece") != piece:
            raise ValueError("written for another key or in another format")
        arrays = {}
        for name, described in attributes["arrays"].items():
            dtype = getattr(torch, described["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{name}: unknown dtype {described['dtype']}")
            stored = group[name]
            if tuple(stored.shape) != tuple(described["shape"]) or stored.dtype != _numpy_dtype(dtype):
                raise ValueError(f"{name}: {stored.dtype} {tuple(stored.shape)} where {described} was written")
            values = np.ascontiguousarray(stored[...])
            if xxhash.xxh3_64_hexdigest(values) != described["xxh3"]:
                raise ValueError(f"{name}: checksum mismatch")
            tensor = torch.from_numpy(values)
            arrays[name] = tensor.view(dtype) if dtype == torch.bfloat16 else tensor
        return arrays, attributes.get("extra", {})

    # ---------------------------------------------------------------- writing
    def write(self, entry: dict, piece: str, arrays: dict[str, torch.Tensor], extra: dict | None = None) -> bool:
        """Store a piece (arrays, JSON ``extra`` attributes) unless it is stored; False if it could not be."""
        if not self.writable:
            return False
        destination = self._folder(entry) / piece
        if destination.is_dir():
            return True
        temporary = self.path / _TEMPORARY / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            self._write(temporary, entry, piece, arrays, extra or {})
            destination.parent.mkdir(exist_ok=True)
            try:
                os.rename(temporary, destination)
            except OSError:
                if not destination.is_dir():
                    raise
                # Another process stored the same piece meanwhile: the same features, keep theirs.
        except Exception as err:  # noqa: BLE001 - the user's work goes on without the disk cache
            self._stop_writing(err)
            return False
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        if self.max_bytes is not None:
            self._evict(keep=destination.parent)
        return True

    @staticmethod
    def _write(folder: Path, entry: dict, piece: str, arrays: dict[str, torch.Tensor], extra: dict) -> None:
        import zarr

        folder.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(folder), mode="w", zarr_format=2)
        described = {}
        for name, tensor in arrays.items():
            tensor = tensor.detach().cpu().contiguous()
            values = tensor.view(torch.int16).numpy().view(np.uint16) if tensor.dtype == torch.bfloat16 \
                else tensor.numpy()
            # Features hardly compress (a few per cent with zstd), so they are stored raw: faster both ways.
            stored = zarr.open_array(store=str(folder / name), mode="w", shape=values.shape, dtype=values.dtype,
                                     chunks=values.shape, compressor=None, zarr_format=2)
            stored[...] = values
            described[name] = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(values.shape),
                               "xxh3": xxhash.xxh3_64_hexdigest(values)}
        # Attributes last: a reader checks arrays against them, and the rename publishes all at once anyway.
        group.attrs.put({"format": FORMAT_VERSION, "key": entry, "piece": piece, "arrays": described,
                         "extra": extra})  # one write (update writes each key: zarr 3)

    def discard(self, entry: dict, piece: str, reason: object) -> None:
        """Remove a piece found damaged (logged with ``reason``), so that it is computed and stored again."""
        folder = self._folder(entry) / piece
        logger.warning("Ignoring the damaged stored features %s: %s", folder, reason)
        self._remove(folder)

    def _stop_writing(self, err: Exception) -> None:
        if self.writable:
            logger.warning("Image features will not be stored in %s (%s); they are computed as usual.",
                           self.path, err)
        self.writable = False

    # ------------------------------------------------------------ maintenance
    def size_bytes(self) -> int:
        """Bytes the stored entries take."""
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[float, Path, int]]:
        """(last used, folder, bytes) per entry."""
        entries = []
        for folder in self.path.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                size = sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
                entries.append((folder.stat().st_mtime, folder, size))
            except OSError:
                continue  # removed meanwhile
        return entries

    def _evict(self, keep: Path) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        for _, folder, size in entries:
            if total <= self.max_bytes:
                break
            if folder != keep:
                self._remove(folder)
                total -= size

    def clear(self) -> None:
        """Remove every stored entry."""
        for folder in list(self.path.iterdir()):
            if not folder.name.startswith(".") and folder.is_dir():
                self._remove(folder)

    def _remove(self, folder: Path) -> None:
        """Remove a piece or entry: renamed aside first, so that no reader sees it half removed."""
        aside = self.path / _TEMPORARY / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            aside.parent.mkdir(exist_ok=True)
            os.rename(folder, aside)
        except OSError:
            return  # gone already, or a read-only store
        shutil.rmtree(aside, ignore_errors=True)

    def _remove_stale_temporaries(self) -> None:
        temporary = self.path / _TEMPORARY
        if not temporary.is_dir():
            return
        for folder in temporary.iterdir():
            pid = folder.name.split("-", 1)[0]
            if pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


# What a predictor's ``embedding_cache`` takes: a folder, an open store, or None (no disk cache).
StoreLike = EmbeddingStore | str | os.PathLike | None


def open_store(store: StoreLike) -> EmbeddingStore | None:
    """An :class:`EmbeddingStore` from a folder (or one already open, or None)."""
    if store is None or isinstance(store, EmbeddingStore):
        return store
    return EmbeddingStore(store)


__all__ = ["EmbeddingStore", "StoreLike", "model_fingerprint", "open_store"]
