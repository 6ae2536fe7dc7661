"""Pretrained weights: a registry with checksums, a download cache, and safe loading.

Where files live (``<cache>`` is :func:`cache_dir`: the ``cache_dir`` argument, else
the ``NAPARI_CLIPSAM_CACHE`` environment variable, else the platform's user cache
folder for ``napari-clipsam``):

- SAM checkpoints: ``<cache>/sam/<entry.filename>``, e.g.
  ``<cache>/sam/sam_vit_b_01ec64.pth``. A file put there by hand is used when its
  checksum matches.
- CLIP weights placed by hand: ``<cache>/clip/<model>_<tag>/`` (``/`` and ``:`` in the
  name become ``_``), holding ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin`` from the model's Hugging Face Hub repository, plus
  ``open_clip_config.json`` for ``hf-hub:`` models. Downloads made by open_clip /
  huggingface_hub go to the Hub cache layout under ``<cache>/clip``.

Every network failure surfaces as :class:`WeightsUnavailableError` (an ``OSError``)
whose message says which file is missing, where it comes from and where to place it
by hand. Checkpoints are read with ``torch.load(..., weights_only=True)`` or
safetensors, so a file can never run code when it is loaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from ..errors import ChecksumMismatchError, WeightsUnavailableError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, "int | None"], None]

CACHE_ENV_VAR = "NAPARI_CLIPSAM_CACHE"
_APP_NAME = "napari-clipsam"
_CHUNK_BYTES = 1 << 20
_USER_AGENT = "napari-clipsam"


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable SAM checkpoint.

    Attributes:
        name: registry name, e.g. ``"vit_b_lm"``.
        url: where the file is downloaded from.
        sha256: hex digest of the file, or None where none is published (the file is
            then verified by ``xxh128`` if possible, else used unverified).
        filename: file name in the cache (unique across the registry).
        architecture: the SAM variant the weights fit (``"vit_b"``, ``"vit_l"``, ``"vit_h"``).
        description: one line for humans.
        xxh128: the xxHash-128 hex digest published by the weights' authors, checked
            when the ``xxhash`` package is installed.
    """

    name: str
    url: str
    sha256: str | None
    filename: str
    architecture: str
    description: str
    xxh128: str | None = None


# Official SAM checkpoints (facebookresearch/segment-anything README). The sha256
# digests are those micro-sam's registry pins for the same URLs
# (computational-cell-analytics/micro-sam, micro_sam/util.py, ``models()``).
#
# micro-sam's light-microscopy (LM) and electron-microscopy organelle (EM) generalist
# models: the BioImage.IO records their current micro-sam release downloads
# (diplomatic-bug, idealistic-rat, noisy-ox, humorous-crab, version 1.2). micro-sam
# publishes only xxHash-128 digests for these files, no sha256, so sha256 is None:
# the file is verified with xxh128 when the optional ``xxhash`` package is present,
# otherwise it is used unverified (with a warning). Loading stays safe either way,
# as checkpoints are read with weights_only=True.
_BIOIMAGE_IO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"

_ENTRIES = (
    WeightsEntry(
        name="vit_b",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        filename="sam_vit_b_01ec64.pth",
        architecture="vit_b",
        description="Segment Anything ViT-B, official checkpoint (375 MB)",
    ),
    WeightsEntry(
        name="vit_l",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        filename="sam_vit_l_0b3195.pth",
        architecture="vit_l",
        description="Segment Anything ViT-L, official checkpoint (1.2 GB)",
    ),
    WeightsEntry(
        name="vit_h",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        filename="sam_vit_h_4b8939.pth",
        architecture="vit_h",
        description="Segment Anything ViT-H, official checkpoint (2.4 GB)",
    ),
    WeightsEntry(
        name="vit_b_lm",
        url=f"{_BIOIMAGE_IO}/diplomatic-bug/1.2/files/vit_b.pt",
        sha256=None,
        filename="micro_sam_vit_b_lm.pt",
        architecture="vit_b",
        description="micro-sam light-microscopy generalist, ViT-B (cells and nuclei)",
        xxh128="fe9252a29f3f4ea53c15a06de471e186",
    ),
    WeightsEntry(
        name="vit_l_lm",
        url=f"{_BIOIMAGE_IO}/idealistic-rat/1.2/files/vit_l.pt",
        sha256=None,
        filename="micro_sam_vit_l_lm.pt",
        architecture="vit_l",
        description="micro-sam light-microscopy generalist, ViT-L (cells and nuclei)",
        xxh128="017f20677997d628426dec80a8018f9d",
    ),
    WeightsEntry(
        name="vit_b_em_organelles",
        url=f"{_BIOIMAGE_IO}/noisy-ox/1.2/files/vit_b.pt",
        sha256=None,
        filename="micro_sam_vit_b_em_organelles.pt",
        architecture="vit_b",
        description="micro-sam electron-microscopy organelle generalist, ViT-B",
        xxh128="f3bf2ed83d691456bae2c3f9a05fb438",
    ),
    WeightsEntry(
        name="vit_l_em_organelles",
        url=f"{_BIOIMAGE_IO}/humorous-crab/1.2/files/vit_l.pt",
        sha256=None,
        filename="micro_sam_vit_l_em_organelles.pt",
        architecture="vit_l",
        description="micro-sam electron-microscopy organelle generalist, ViT-L",
        xxh128="810b084b6e51acdbf760a993d8619f2d",
    ),
)

SAM_WEIGHTS: dict[str, WeightsEntry] = {entry.name: entry for entry in _ENTRIES}

# The checkpoint "default" means for each SAM variant (the "tiny" test variant has none).
DEFAULT_SAM_WEIGHTS: dict[str, str] = {"vit_b": "vit_b", "vit_l": "vit_l", "vit_h": "vit_h"}

# The pretrained tag "default" means for open_clip architectures (the paper: OpenAI's).
DEFAULT_CLIP_PRETRAINED: dict[str, str] = {
    "ViT-B-16": "openai",
    "ViT-B-32": "openai",
    "ViT-L-14": "openai",
    "ViT-L-14-336": "openai",
}

_HF_HUB_PREFIX = "hf-hub:"
_HF_CONFIG_NAME = "open_clip_config.json"


# What a user may type for "no pretrained weights" (random initialisation, for a try-out).
RANDOM_WEIGHTS = "none (random)"
_RANDOM_WORDS = {"none", "random", RANDOM_WEIGHTS}


def parse_weights_choice(value: str | os.PathLike | None) -> str | os.PathLike | None:
    """A weights choice as typed (CLI, widget, settings) -> the ``load_model`` argument.

    ``"none"``, ``"random"`` or ``"none (random)"`` (any case) mean random weights (None);
    an empty value means ``"default"``; anything else (a registry name, a tag, a path)
    passes through.
    """
    if value is None or isinstance(value, os.PathLike):
        return value
    text = value.strip()
    if text.lower() in _RANDOM_WORDS:
        return None
    return text or "default"


def list_sam_weights(architecture: str | None = None) -> list[str]:
    """Names of the registered SAM checkpoints, optionally only those of one architecture."""
    return [
        name
        for name, entry in SAM_WEIGHTS.items()
        if architecture is None or entry.architecture == architecture
    ]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder for weights: ``override``, else ``$NAPARI_CLIPSAM_CACHE``, else the user cache."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR, "")
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_cache_dir(_APP_NAME))


def weights_path(entry: WeightsEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``entry`` is kept in the cache, and where it can be placed by hand."""
    return _cache_root(cache_dir) / "sam" / entry.filename


def _cache_root(override: str | os.PathLike | None) -> Path:
    # Functions whose parameter is named cache_dir (the name callers use) cannot call
    # the function of that name.
    return cache_dir(override)


# ---------------------------------------------------------------------------------
# Checksums


def _xxhash_module():
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash


def _checksum_spec(entry: WeightsEntry) -> tuple[str, str] | None:
    """(algorithm, expected hex digest) to verify ``entry`` with, or None if it cannot be."""
    if entry.sha256:
        return "sha256", entry.sha256.lower()
    if entry.xxh128 and _xxhash_module() is not None:
        return "xxh128", entry.xxh128.lower()
    return None


def _new_hasher(algorithm: str):
    if algorithm == "xxh128":
        return _xxhash_module().xxh128()
    return hashlib.new(algorithm)


def _file_digest(path: Path, algorithm: str) -> str:
    hasher = _new_hasher(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stat_key(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_sidecar(path: Path, algorithm: str, digest: str) -> None:
    record = {**_stat_key(path), "algorithm": algorithm, "digest": digest}
    sidecar = _sidecar_path(path)
    try:
        _atomic_write_text(sidecar, json.dumps(record))
    except OSError as err:
        # Only a speed-up: without it the file is hashed again next time.
        logger.info("Could not record the checksum of %s: %s", path, err)


def _atomic_write_text(path: Path, text: str) -> None:
    from .._io import write_atomically

    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def _cached_file_state(entry: WeightsEntry, path: Path) -> tuple[str, str | None]:
    """Check the file at ``path`` for ``entry``.

    Returns:
        ``("verified", None)``, ``("unverified", None)`` (no checksum usable),
        ``("missing", None)`` or ``("mismatch", actual_digest)``.
    """
    if not path.is_file():
        return "missing", None
    spec = _checksum_spec(entry)
    if spec is None:
        return "unverified", None
    algorithm, expected = spec
    # Hashing a 2.4 GB checkpoint takes seconds; a sidecar records a past success
    # for this very file (same size and modification time) so loads stay fast.
    record = _read_sidecar(path)
    if (
        isinstance(record, dict)
        and record.get("algorithm") == algorithm
        and record.get("digest") == expected
        and {key: record.get(key) for key in ("size", "mtime_ns")} == _stat_key(path)
    ):
        return "verified", None
    logger.info("Verifying the %s checksum of %s", algorithm, path)
    actual = _file_digest(path, algorithm)
    if actual != expected:
        return "mismatch", actual
    _write_sidecar(path, algorithm, actual)
    return "verified", None


def _describe_checksum(entry: WeightsEntry) -> str:
    if entry.sha256:
        return f"Its sha256 must be {entry.sha256}."
    if entry.xxh128:
        return (
            f"No sha256 is published for it; its xxh128 is {entry.xxh128} (checked when "
            "the xxhash package is installed, otherwise the file is used unverified)."
        )
    return "No checksum is published for it; it is used unverified."


# ---------------------------------------------------------------------------------
# Download


def _unavailable_message(entry: WeightsEntry, destination: Path, reason: str) -> str:
    return (
        f"The SAM weights {entry.name!r} ({entry.filename}) are not available: {reason}\n"
        f"Download {entry.url}\n"
        f"and save it as\n    {destination}\n"
        f"{_describe_checksum(entry)} "
        f"(Set {CACHE_ENV_VAR} to keep weights in another folder.)"
    )


def fetch(
    entry: WeightsEntry,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 30,
) -> Path:
    """Path of ``entry``'s file in the cache, downloading and verifying it if needed.

    Args:
        progress: called as ``progress(bytes_done, bytes_total)`` while downloading;
            ``bytes_total`` is None when the server does not say.
        timeout: seconds a connection or a read may stall before the download fails.

    Raises:
        WeightsUnavailableError: the download failed (its message says where to put
            the file by hand).
        ChecksumMismatchError: the downloaded file's checksum is wrong.
    """
    destination = weights_path(entry, cache_dir)
    state, actual = _cached_file_state(entry, destination)
    if state == "verified":
        return destination
    if state == "unverified":
        logger.warning(
            "Using %s unverified: no checksum can be checked for %r.", destination, entry.name
        )
        return destination
    if state == "mismatch":
        algorithm, expected = _checksum_spec(entry)
        logger.warning(
            "%s has %s %s, expected %s; downloading it again.",
            destination,
            algorithm,
            actual,
            expected,
        )

    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(entry, destination, progress, timeout)
    except WeightsUnavailableError as err:
        if state == "mismatch":
            raise type(err)(
                f"{err}\nThe file already at {destination} has the wrong checksum; "
                "it was left as it is."
            ) from err.__cause__
        raise
    return destination


def _download(
    entry: WeightsEntry, destination: Path, progress: ProgressCallback | None, timeout: float
) -> None:
    spec = _checksum_spec(entry)
    hasher = _new_hasher(spec[0]) if spec else None
    handle, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=destination.name + ".", suffix=".part"
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as output:
            done, total = _stream_to(entry, destination, output, hasher, progress, timeout)
        if total is not None and done != total:
            raise WeightsUnavailableError(
                _unavailable_message(
                    entry, destination, f"the download stopped after {done} of {total} bytes."
                )
            )
        if spec is not None:
            algorithm, expected = spec
            actual = hasher.hexdigest()
            if actual != expected:
                raise ChecksumMismatchError(
                    f"The download of {entry.name!r} from {entry.url} is corrupt: its {algorithm} "
                    f"is {actual}, expected {expected}. The file was discarded; try again, or "
                    f"download it by hand and save it as\n    {destination}"
                )
        else:
            logger.warning(
                "%s downloaded without verification: no checksum can be checked for %r.",
                destination,
                entry.name,
            )
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if spec is not None:
        _write_sidecar(destination, spec[0], spec[1])
    logger.info("Downloaded %s to %s", entry.url, destination)


def _stream_to(entry, destination, output, hasher, progress, timeout) -> tuple[int, int | None]:
    """Copy ``entry.url`` into ``output``; network failures become WeightsUnavailableError."""

    def unavailable(reason: str) -> WeightsUnavailableError:
        return WeightsUnavailableError(_unavailable_message(entry, destination, reason))

    request = urllib.request.Request(entry.url, headers={"User-Agent": _USER_AGENT})
    logger.info("Downloading %s from %s", entry.filename, entry.url)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise unavailable(f"the server answered HTTP {err.code} {err.reason}.") from err
    except urllib.error.URLError as err:
        raise unavailable(f"no connection ({err.reason}).") from err
    except (OSError, http.client.HTTPException) as err:
        raise unavailable(f"no connection ({type(err).__name__}: {err}).") from err
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        if progress is not None:
            progress(0, total)
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as err:
                # Timeouts, resets and short reads; errors writing the local file are
                # not caught here, they are no network failure.
                raise unavailable(
                    f"the download broke off after {done} bytes ({type(err).__name__}: {err})."
                ) from err
            if not chunk:
                break
            output.write(chunk)
            if hasher is not None:
                hasher.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return done, total


# ---------------------------------------------------------------------------------
# SAM checkpoints


def resolve_sam_checkpoint(
    variant: str,
    checkpoint: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> Path | None:
    """The file to load into a SAM of ``variant`` (downloaded if needed); None for random weights.

    Args:
        checkpoint: None (random weights), ``"default"`` (the official checkpoint of
            ``variant``), a registry name (see :func:`list_sam_weights`) or a file path.
    """
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str) and checkpoint == "default":
        if variant not in DEFAULT_SAM_WEIGHTS:
            raise ValueError(
                f"SAM variant {variant!r} has no published checkpoint; pass checkpoint=None "
                "for random weights or the path of a checkpoint file."
            )
        return fetch(SAM_WEIGHTS[DEFAULT_SAM_WEIGHTS[variant]], cache_dir, progress)
    if isinstance(checkpoint, str) and checkpoint in SAM_WEIGHTS:
        entry = SAM_WEIGHTS[checkpoint]
        if entry.architecture != variant:
            raise ValueError(
                f"The SAM checkpoint {checkpoint!r} is for {entry.architecture}, not {variant}. "
                f"Choose the {entry.architecture} variant, or one of "
                f"{', '.join(list_sam_weights(variant)) or 'no registered checkpoints'} "
                f"for {variant}."
            )
        return fetch(entry, cache_dir, progress)
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"No SAM checkpoint file at {path}, and {str(checkpoint)!r} is not a registered name. "
        f"Registered names: {', '.join(SAM_WEIGHTS)}; or pass 'default' or None."
    )


# ---------------------------------------------------------------------------------
# CLIP weights (open_clip pretrained tags and Hugging Face Hub repositories)


def _clip_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _clip_manual_dir(clip_name: str, tag: str | None, root: Path) -> Path:
    folder = _clip_slug(clip_name) if tag is None else f"{_clip_slug(clip_name)}_{_clip_slug(tag)}"
    return root / "clip" / folder


def _weight_file_candidates(filename: str) -> list[str]:
    """File names to look for, safetensors first, as open_clip's Hub download does."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _hf_offline() -> bool:
    """Whether the user asked huggingface_hub to stay offline (read, never set)."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    # huggingface_hub reads the variable once at import; honour a later setting too.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _unreachable_reason(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url``'s host (or the proxy in front of it) cannot be reached; None if it can.

    huggingface_hub retries a failed request for about 25 s per file and prints each
    retry, so a quick TCP connection test decides first whether trying makes sense.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return f"{url} has no host"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            host, port = proxy_parts.hostname, proxy_parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot connect to {host}:{port} ({err})"


def _openai_sha256(url: str) -> str | None:
    # open_clip's OpenAI URLs carry the file's sha256 as the folder name.
    if "openaipublic" in url:
        candidate = url.rstrip("/").split("/")[-2]
        if re.fullmatch(r"[0-9a-f]{64}", candidate):
            return candidate
    return None


def resolve_clip_checkpoint(
    clip_name: str,
    pretrained: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Path | None, dict[str, Any]]:
    """The weights file for CLIP ``clip_name`` and open_clip's pretrained config for it.

    Looks, in this order, for a file placed by hand under ``<cache>/clip/``, for an
    earlier download in the Hub cache under ``<cache>/clip``, then downloads with
    open_clip.

    Args:
        clip_name: an open_clip architecture (``"ViT-B-16"``) or ``"hf-hub:org/repo"``.
        pretrained: None (random weights), ``"default"`` (see
            ``DEFAULT_CLIP_PRETRAINED``; for ``hf-hub:`` names the repository's weights),
            an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``) or a
            file path.
        progress: called with ``(0, None)`` before a download and ``(size, size)``
            after it; open_clip downloads in one call, so there is nothing in between.

    Returns:
        ``(path, cfg)``: ``cfg`` is open_clip's pretrained config (``cfg.get("quick_gelu")``,
        ``mean``, ``std``, ...); for ``hf-hub:`` names it also holds ``model_cfg`` and
        ``config_file`` from the repository's ``open_clip_config.json``. ``(None, {})``
        when ``pretrained`` is None; ``(path, {})`` for a file path.

    Raises:
        WeightsUnavailableError: the weights could not be downloaded; the message names
            the source and the exact path where the file can be placed by hand.
    """
    if pretrained is None:
        return None, {}
    root = _cache_root(cache_dir)
    is_hub_name = clip_name.startswith(_HF_HUB_PREFIX)
    name = clip_name if is_hub_name else clip_name.replace("/", "-")  # as open_clip does
    if isinstance(pretrained, str) and pretrained == "default":
        if is_hub_name:
            return _resolve_hf_hub_model(name, root, progress)
        if name not in DEFAULT_CLIP_PRETRAINED:
            raise ValueError(
                f"No default pretrained weights are defined for CLIP {clip_name!r}; pass an "
                f"open_clip pretrained tag ({_tags_text(name)}), a file path, or None."
            )
        return _resolve_clip_tag(name, DEFAULT_CLIP_PRETRAINED[name], root, progress)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, {}
    if isinstance(pretrained, str) and not is_hub_name:
        import open_clip

        if open_clip.get_pretrained_cfg(name, pretrained):
            return _resolve_clip_tag(name, pretrained, root, progress)
    if isinstance(pretrained, os.PathLike) or os.sep in str(pretrained) or path.suffix:
        raise FileNotFoundError(f"No CLIP weights file at {path}.")
    if is_hub_name:
        raise ValueError(
            f"{clip_name} takes its weights from its Hugging Face Hub repository: pass "
            f"pretrained='default', a file path or None, not {pretrained!r}."
        )
    raise ValueError(
        f"Unknown pretrained tag {pretrained!r} for CLIP {clip_name!r}, and no such file. "
        f"Tags: {_tags_text(name)}."
    )


def _tags_text(name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return ", ".join(tags) if tags else "none known to open_clip"


@dataclass(frozen=True)
class _ClipFile:
    """One CLIP file: where it comes from and where a user may place it by hand."""

    label: str
    source: str
    manual_dir: Path
    names: tuple[str, ...]  # accepted file names, the preferred first
    repo_id: str | None  # Hugging Face Hub repository, None for a plain URL
    reachable_url: str  # whose host must answer for a download to make sense
    note: str = ""

    def find_local(self, root: Path) -> Path | None:
        """The file placed by hand, else the one in the Hub cache; looks only on disk."""
        for name in self.names:
            if (self.manual_dir / name).is_file():
                logger.info("Using the CLIP file placed by hand: %s", self.manual_dir / name)
                return self.manual_dir / name
        if self.repo_id is None:
            return None
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for name in self.names:
            found = try_to_load_from_cache(self.repo_id, name, cache_dir=str(root / "clip"))
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        return None

    def unavailable(self, reason: str) -> WeightsUnavailableError:
        others = ""
        if len(self.names) > 1:
            others = f"\n({', '.join(self.names[1:])} from the same source is accepted there too.)"
        return WeightsUnavailableError(
            f"The {self.label} are not available: {reason}\n"
            f"Download {self.names[0]} from {self.source}\n"
            f"and save it as\n    {self.manual_dir / self.names[0]}{others}{self.note}\n"
            f"(Set {CACHE_ENV_VAR} to keep weights in another folder.)"
        )

    def obtain(
        self, root: Path, download: Callable[[], str], progress: ProgressCallback | None
    ) -> Path:
        """The file on disk, else ``download()``'s; failures become WeightsUnavailableError."""
        local = self.find_local(root)
        if local is not None:
            return local
        if self.repo_id is not None and _hf_offline():
            raise self.unavailable("Hugging Face Hub offline mode is on (HF_HUB_OFFLINE).")
        reason = _unreachable_reason(self.reachable_url)
        if reason is not None:
            raise self.unavailable(f"no connection ({reason}).")
        if progress is not None:
            progress(0, None)
        logger.info("Downloading the %s from %s", self.label, self.source)
        try:
            path = Path(download())
        except Exception as err:
            raise self.unavailable(f"the download failed ({type(err).__name__}: {err}).") from err
        if progress is not None:
            size = path.stat().st_size
            progress(size, size)
        return path


def _hub_source(repo_id: str) -> str:
    return f"the Hugging Face Hub repository {repo_id} (https://huggingface.co/{repo_id})"


def _resolve_clip_tag(
    name: str, tag: str, root: Path, progress: ProgressCallback | None
) -> tuple[Path, dict[str, Any]]:
    import open_clip
    from open_clip.pretrained import download_pretrained

    # A copy: the caller must not be able to edit open_clip's registry.
    cfg = dict(open_clip.get_pretrained_cfg(name, tag))
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    label = f"CLIP {name} weights {tag!r}"
    manual_dir = _clip_manual_dir(name, tag, root)
    if hub:
        # open_clip prefers the Hub copy when both exist, and so do we: OpenAI's own
        # URL serves a TorchScript archive, not a plain state dict.
        repo_id, filename = os.path.split(hub)
        note = ""
        if url:
            sha = _openai_sha256(url)
            note = (
                f"\n(The original release, {url}"
                + (f", sha256 {sha}" if sha else "")
                + ", has another format and is not loaded by napari-clipsam.)"
            )
        file = _ClipFile(
            label,
            _hub_source(repo_id),
            manual_dir,
            tuple(_weight_file_candidates(filename)),
            repo_id,
            _hf_endpoint(),
            note,
        )
    else:
        # open_clip keeps URL downloads as <cache>/clip/<file name>.
        filename = os.path.basename(url)
        downloaded = root / "clip" / filename
        if downloaded.is_file():
            return downloaded, cfg
        file = _ClipFile(label, url, manual_dir, (filename,), None, url)
    hub_cache = str(root / "clip")
    path = file.obtain(root, lambda: download_pretrained(cfg, cache_dir=hub_cache), progress)
    return path, cfg


def _resolve_hf_hub_model(
    clip_name: str, root: Path, progress: ProgressCallback | None
) -> tuple[Path, dict[str, Any]]:
    from open_clip.pretrained import download_pretrained_from_hf

    repo_id = clip_name[len(_HF_HUB_PREFIX) :]
    manual_dir = _clip_manual_dir(clip_name, None, root)
    hub_cache = str(root / "clip")
    config_file = _ClipFile(
        f"CLIP {clip_name} configuration",
        _hub_source(repo_id),
        manual_dir,
        (_HF_CONFIG_NAME,),
        repo_id,
        _hf_endpoint(),
    )
    config_path = config_file.obtain(
        root,
        lambda: download_pretrained_from_hf(repo_id, filename=_HF_CONFIG_NAME, cache_dir=hub_cache),
        None,
    )
    weights_file = _ClipFile(
        f"CLIP {clip_name} weights",
        _hub_source(repo_id),
        manual_dir,
        tuple(_weight_file_candidates("")),
        repo_id,
        _hf_endpoint(),
        f"\n{_HF_CONFIG_NAME} from the same repository belongs in that folder too.",
    )
    weights = weights_file.obtain(
        root, lambda: download_pretrained_from_hf(repo_id, cache_dir=hub_cache), progress
    )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_cfg = config.get("model_cfg", config)
    cfg = {
        **config.get("preprocess_cfg", {}),
        "hf_hub": f"{repo_id}/",
        "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
        "model_cfg": model_cfg,
        "config_file": str(config_path),
    }
    return weights, cfg


__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_CLIP_PRETRAINED",
    "DEFAULT_SAM_WEIGHTS",
    "SAM_WEIGHTS",
    "ChecksumMismatchError",
    "WeightsEntry",
    "WeightsUnavailableError",
    "cache_dir",
    "fetch",
    "list_sam_weights",
    "resolve_clip_checkpoint",
    "resolve_sam_checkpoint",
    "weights_path",
]
