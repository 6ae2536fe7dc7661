"""Weight files on disk, and downloads of the missing ones: pooch for URLs with pinned hashes,
huggingface_hub for Hub files. Imports neither torch nor open_clip."""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChecksumMismatchError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class WeightsFile:
    """One file a model needs.

    Attributes:
        label: names it for people, e.g. ``"SAM checkpoint 'vit_b'"``.
        path: where it is kept, and where to save it by hand.
        url: its direct download URL.
        known_hash: ``"sha256:<hex>"`` or ``"xxh128:<hex>"`` (pooch's notation); None if none is pinned.
        hub: ``(repo_id, hub_cache)`` of a Hugging Face Hub file, downloaded with huggingface_hub
            into (and looked for in) the Hub cache layout under ``hub_cache``.
        also_accepted: other file names taken in ``path``'s place, from the same source.
    """

    label: str
    path: Path
    url: str
    known_hash: str | None = None
    hub: tuple[str, Path] | None = None
    also_accepted: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.path.name, *self.also_accepted)


def find_on_disk(file: WeightsFile) -> Path | None:
    """The file, if it is on disk (saved by hand or downloaded before) with the hash it must have."""
    import pooch

    # Hashing is cheap next to loading (sha256 of vit_b's 375 MB: 0.2 s here), so no record of past checks.
    for candidate in (file.path.with_name(name) for name in file.names):
        if candidate.is_file():
            if file.known_hash is None or pooch.hashes.hash_matches(str(candidate), file.known_hash):
                return candidate
            logger.warning("%s does not have the hash %s; it is downloaded again.", candidate, file.known_hash)
    if file.hub is not None:
        from huggingface_hub import try_to_load_from_cache

        for name in file.names:
            found = try_to_load_from_cache(file.hub[0], name, cache_dir=file.hub[1])
            if isinstance(found, str):
                return Path(found)
    return None


def obtain(
    files: Sequence[WeightsFile], progress: ProgressCallback | None = None, timeout: float = 30
) -> tuple[list[Path | None], list[tuple[WeightsFile, str, Exception | None]]]:
    """Every file's path, from disk or downloaded; a host is tried only if it answers at once.

    Returns:
        ``(paths, failures)``: ``paths[i]`` is None where ``files[i]`` failed; a failure is
        ``(file, reason, error)``, ``error`` a ChecksumMismatchError where a download had the wrong hash.
    """
    paths = [find_on_disk(file) for file in files]
    failures, problems = [], {}  # problems: per host, so one probe serves all its files
    for index, file in enumerate(files):
        if paths[index] is not None:
            continue
        host = urllib.parse.urlsplit(file.url).netloc
        if file.hub is not None and _hub_offline():
            problems[host] = "Hugging Face Hub offline mode is on (HF_HUB_OFFLINE)."
        elif host not in problems:
            problems[host] = _connection_problem(file.url, min(timeout, 5))
        if problems[host] is not None:
            failures.append((file, problems[host], None))
            continue
        try:
            paths[index] = _download_from_hub(file, progress) if file.hub else _download(file, progress, timeout)
        except Exception as err:  # whatever the download library raised is reported with the file
            if file.hub is None and isinstance(err, ValueError):  # pooch's hash check
                err = ChecksumMismatchError(f"the download had the wrong hash and was discarded. {err}")
            reason = f"the download failed ({type(err).__name__}: {err})"
            if file.path.is_file():
                reason += f"; the file already at {file.path} has the wrong hash and was left as it is"
            failures.append((file, reason, err))
    return paths, failures


def _download(file: WeightsFile, progress: ProgressCallback | None, timeout: float) -> Path:
    import pooch

    from .._io import give_new_file_permissions

    # pooch downloads into a temporary file beside the target and moves it into place only
    # once the hash matched; chunks of 1 MiB keep the progress calls few.
    downloader = pooch.HTTPDownloader(progressbar=_progress_bar(progress)(), chunk_size=1 << 20, timeout=timeout)
    path = Path(pooch.retrieve(file.url, file.known_hash, file.path.name, file.path.parent, downloader=downloader))
    # pooch's temporary file is private (0600) and keeps that once moved: a cache shared by a
    # lab would hold weights only the downloader can read. (huggingface_hub sets the umask's.)
    give_new_file_permissions(path)
    return path


def _download_from_hub(file: WeightsFile, progress: ProgressCallback | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    bar = _progress_bar(progress)
    for name in file.names:  # the preferred name first; the next where the repository lacks it
        try:
            return Path(hf_hub_download(file.hub[0], name, cache_dir=file.hub[1], endpoint=hub_endpoint(), tqdm_class=bar))
        except RemoteEntryNotFoundError:
            if name == file.names[-1]:
                raise


def hub_endpoint() -> str:
    """The Hugging Face Hub's address, ``HF_ENDPOINT`` read now (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; a later setting counts too.
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _connection_problem(url: str, timeout: float) -> str | None:
    """Why ``url``'s host (or the proxy before it) does not answer; None when it does.

    huggingface_hub retries a failed connection for about 25 s per file, and a host behind a
    firewall that drops packets stalls a download for its whole timeout: one quick TCP
    connection tells first whether trying makes sense.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"no connection to {host}:{port} ({err})."
    return None


def _progress_bar(progress: ProgressCallback | None) -> type:
    """A class with the part of tqdm's interface that pooch and huggingface_hub use, reporting to ``progress``."""

    class ProgressBar:
        def __init__(self, total: int | None = None, initial: int = 0, **display_options) -> None:
            self.total, self.n, self._reported = total, initial, None
            if total:  # huggingface_hub's first chunk is 10 MB: show the bar before it
                self.update(0)

        def update(self, n: int = 1) -> None:
            self.n += n
            total = self.total or None  # pooch says 0 when the server sends no length
            done = max(0, self.n if total is None else min(self.n, total))
            if progress is not None and (done, total) != self._reported:
                self._reported = (done, total)
                progress(done, total)

        def reset(self, total: int | None = None) -> None:
            self.n = 0  # pooch refills the bar at the end: reporting 0 here would start a new bar

        def __enter__(self):
            return self

        def _ignore(self, *args, **kwargs) -> None:
            """What tqdm draws or closes; nothing here. (update_transfer: Xet downloads report once.)"""

        __exit__ = close = refresh = set_postfix_str = set_transfer_postfix_str = update_transfer = _ignore

    return ProgressBar


__all__ = ["ProgressCallback", "WeightsFile", "find_on_disk", "hub_endpoint", "obtain"]
