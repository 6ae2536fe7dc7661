"""Which weight files a model needs, where they come from, and where they are kept.

``<cache>`` is :func:`cache_dir`. A file saved by hand where a :class:`WeightsUnavailableError`
says is used as it is (a SAM file once its hash matches): SAM checkpoints in ``<cache>/sam/``,
CLIP weights as ``<cache>/clip/<model>_<tag>/open_clip_model.safetensors`` (``hf-hub:`` models:
``<cache>/clip/hf-hub_<org>_<repo>/`` with their ``open_clip_config.json``). Hub downloads go to
the Hub cache layout under ``<cache>/clip``. Importing this loads neither torch nor open_clip.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from ..errors import ChecksumMismatchError, WeightsUnavailableError
from .download import ProgressCallback, WeightsFile, hub_endpoint, obtain

CACHE_ENV_VAR = "NAPARI_CLIPSAM_CACHE"


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable SAM checkpoint, kept as ``<cache>/sam/<filename>``.

    ``known_hash`` is its published hash in pooch's notation (``"sha256:<hex>"``, ``"xxh128:<hex>"``),
    or None; ``architecture`` the SAM variant it fits (``"vit_b"``, ``"vit_l"``, ``"vit_h"``).
    """

    name: str
    url: str
    known_hash: str | None
    filename: str
    architecture: str
    description: str


# Meta's checkpoints (segment-anything README; sha256 as micro-sam's registry pins them), then
# micro-sam's light- and electron-microscopy generalists (release 1.2 on BioImage.IO), for
# which micro-sam publishes xxh128 hashes only.
_META = "https://dl.fbaipublicfiles.com/segment_anything"
_BIOIMAGE_IO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"
_LM, _EM = "micro-sam light-microscopy generalist", "micro-sam electron-microscopy organelle generalist"
SAM_WEIGHTS: dict[str, WeightsEntry] = {entry.name: entry for entry in (
    WeightsEntry("vit_b", f"{_META}/sam_vit_b_01ec64.pth",
                 "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                 "sam_vit_b_01ec64.pth", "vit_b", "Segment Anything ViT-B, official checkpoint (375 MB)"),
    WeightsEntry("vit_l", f"{_META}/sam_vit_l_0b3195.pth",
                 "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                 "sam_vit_l_0b3195.pth", "vit_l", "Segment Anything ViT-L, official checkpoint (1.2 GB)"),
    WeightsEntry("vit_h", f"{_META}/sam_vit_h_4b8939.pth",
                 "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                 "sam_vit_h_4b8939.pth", "vit_h", "Segment Anything ViT-H, official checkpoint (2.6 GB)"),
    WeightsEntry("vit_b_lm", f"{_BIOIMAGE_IO}/diplomatic-bug/1.2/files/vit_b.pt", "xxh128:fe9252a29f3f4ea53c15a06de471e186",
                 "micro_sam_vit_b_lm.pt", "vit_b", f"{_LM}, ViT-B (cells and nuclei)"),
    WeightsEntry("vit_l_lm", f"{_BIOIMAGE_IO}/idealistic-rat/1.2/files/vit_l.pt", "xxh128:017f20677997d628426dec80a8018f9d",
                 "micro_sam_vit_l_lm.pt", "vit_l", f"{_LM}, ViT-L (cells and nuclei)"),
    WeightsEntry("vit_b_em_organelles", f"{_BIOIMAGE_IO}/noisy-ox/1.2/files/vit_b.pt",
                 "xxh128:f3bf2ed83d691456bae2c3f9a05fb438", "micro_sam_vit_b_em_organelles.pt", "vit_b", f"{_EM}, ViT-B"),
    WeightsEntry("vit_l_em_organelles", f"{_BIOIMAGE_IO}/humorous-crab/1.2/files/vit_l.pt",
                 "xxh128:810b084b6e51acdbf760a993d8619f2d", "micro_sam_vit_l_em_organelles.pt", "vit_l", f"{_EM}, ViT-L"),
)}

# The checkpoint "default" means for each SAM variant (the "tiny" test variant has none).
DEFAULT_SAM_WEIGHTS: dict[str, str] = {"vit_b": "vit_b", "vit_l": "vit_l", "vit_h": "vit_h"}

# The tag "default" means for open_clip architectures (the paper's: OpenAI's), and the Hub
# repository open_clip takes it from, written out so that listing them needs no open_clip.
DEFAULT_CLIP_WEIGHTS: dict[str, tuple[str, str]] = {
    "ViT-B-16": ("openai", "timm/vit_base_patch16_clip_224.openai"),
    "ViT-B-32": ("openai", "timm/vit_base_patch32_clip_224.openai"),
    "ViT-L-14": ("openai", "timm/vit_large_patch14_clip_224.openai"),
    "ViT-L-14-336": ("openai", "timm/vit_large_patch14_clip_336.openai"),
}
DEFAULT_CLIP_PRETRAINED: dict[str, str] = {name: tag for name, (tag, _) in DEFAULT_CLIP_WEIGHTS.items()}

HF_HUB_PREFIX = "hf-hub:"
HUB_CONFIG_NAME = "open_clip_config.json"
_HUB_WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # safetensors preferred

# What a user may type for "no pretrained weights" (random initialisation, for a try-out).
RANDOM_WEIGHTS = "none (random)"
_RANDOM_WORDS = {"none", "random", RANDOM_WEIGHTS}


def parse_weights_choice(value: str | os.PathLike | None) -> str | os.PathLike | None:
    """A weights choice as typed (CLI, widget, settings) -> the ``load_model`` argument.

    ``"none"``, ``"random"`` or ``"none (random)"`` (any case) mean random weights (None); an
    empty value means ``"default"``; anything else (a registry name, a tag, a path) passes.
    """
    if value is None or isinstance(value, os.PathLike):
        return value
    text = value.strip()
    return None if text.lower() in _RANDOM_WORDS else text or "default"


def hub_repo_id(clip_name: str) -> str | None:
    """The Hugging Face Hub repository of an ``hf-hub:org/repo`` CLIP name; None for other names."""
    return clip_name[len(HF_HUB_PREFIX):] if clip_name.startswith(HF_HUB_PREFIX) else None


def list_sam_weights(architecture: str | None = None) -> list[str]:
    """Names of the registered SAM checkpoints, optionally only those of one architecture."""
    return [name for name, entry in SAM_WEIGHTS.items() if architecture in (None, entry.architecture)]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder for weights: ``override``, else ``$NAPARI_CLIPSAM_CACHE``, else the user cache."""
    chosen = str(override or "") or os.environ.get(CACHE_ENV_VAR, "")
    return Path(chosen).expanduser() if chosen else Path(platformdirs.user_cache_dir("napari-clipsam"))


_root = cache_dir  # for the functions whose cache_dir parameter hides this function


def weights_path(entry: WeightsEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``entry`` is kept in the cache, and where it can be saved by hand."""
    return _root(cache_dir) / "sam" / entry.filename


def sam_file(entry: WeightsEntry, cache_dir: str | os.PathLike | None = None) -> WeightsFile:
    """The file of a registered SAM checkpoint."""
    return WeightsFile(f"SAM checkpoint {entry.name!r}", weights_path(entry, cache_dir), entry.url, entry.known_hash)


def clip_folder(clip_name: str, tag: str | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder for CLIP weights saved by hand: ``<cache>/clip/<model>_<tag>``."""
    return _root(cache_dir) / "clip" / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{clip_name}_{tag or ''}").strip("_")


def clip_file(clip_name: str, tag: str | None, hub: str, cache_dir=None, config: bool = False) -> WeightsFile:
    """CLIP weights (with ``config``: the model's open_clip_config.json) from the Hub.

    Args:
        hub: ``"org/repo"``, or ``"org/repo/file"`` as open_clip's pretrained cfg names it.
    """
    from huggingface_hub import hf_hub_url

    parts = hub.strip("/").split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    names = (HUB_CONFIG_NAME,) if config else (filename,) if filename else _HUB_WEIGHTS_NAMES
    what = "configuration" if config else f"weights {tag!r}" if tag else "weights"
    return WeightsFile(
        f"CLIP {clip_name} {what}", clip_folder(clip_name, tag, cache_dir) / names[0],
        hf_hub_url(repo_id, names[0], endpoint=hub_endpoint()), None, (repo_id, _root(cache_dir) / "clip"), names[1:],
    )


@dataclass
class _Plan:
    """What one weights choice needs: files to obtain, and how their paths become the result."""

    files: list[WeightsFile]
    finish: Callable[[list[Path]], Any] = lambda paths: paths[0]


def _plan_sam(variant: str, checkpoint: str | os.PathLike | None, root: Path) -> _Plan:
    """The plan of a SAM choice: a registered checkpoint's file, a file path, or nothing (random)."""
    if checkpoint is None:
        return _Plan([], lambda paths: None)
    name = DEFAULT_SAM_WEIGHTS.get(variant) if checkpoint == "default" else checkpoint
    if name is None:
        raise ValueError(f"SAM variant {variant!r} has no published checkpoint; pass checkpoint=None "
                         "for random weights or the path of a checkpoint file.")
    if name in SAM_WEIGHTS:
        entry = SAM_WEIGHTS[name]
        if entry.architecture != variant:
            raise ValueError(f"The SAM checkpoint {name!r} is for {entry.architecture}, not {variant}. Choose the "
                             f"{entry.architecture} variant, or for {variant}: {', '.join(list_sam_weights(variant))}.")
        return _Plan([sam_file(entry, root)])
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No SAM checkpoint file at {path}, and {str(checkpoint)!r} is not a registered name. "
                                f"Registered names: {', '.join(SAM_WEIGHTS)}; or pass 'default' or None.")
    return _Plan([], lambda paths: path)


def _plan_clip(clip_name: str, pretrained: str | os.PathLike | None, root: Path, file_cfg=None) -> _Plan:
    """The plan of a CLIP choice: a tag's Hub file, an ``hf-hub:`` model's config (and weights), or a path."""
    repo_id = hub_repo_id(clip_name)
    name = clip_name if repo_id else clip_name.replace("/", "-")  # as open_clip does
    path = None if pretrained in (None, "default") else Path(pretrained).expanduser()
    if path is not None and not path.is_file():
        if isinstance(pretrained, os.PathLike) or os.sep in str(pretrained) or path.suffix:
            raise FileNotFoundError(f"No CLIP weights file at {path}.")
        path = None  # a pretrained tag
    beside = path.with_name(HUB_CONFIG_NAME) if path is not None else None
    if repo_id:
        if beside is not None and beside.is_file():
            return _Plan([], lambda paths: (path, _cfg_from_config(beside, True)))
        if path is None and pretrained not in (None, "default"):
            raise ValueError(f"{clip_name} takes its weights from its Hugging Face Hub repository: pass "
                             f"pretrained='default', a file path or None, not {pretrained!r}.")
        # The configuration says the architecture, even of random weights.
        files = [clip_file(name, None, repo_id, root, config=True)]
        files += [clip_file(name, None, repo_id, root)] if pretrained == "default" else []
        return _Plan(files, lambda paths: (paths[1] if len(paths) > 1 else path, _cfg_from_config(paths[0], True)))
    if path is not None:
        cfg = _cfg_from_config(beside, False) if beside.is_file() else file_cfg(name, path) if file_cfg else {}
        return _Plan([], lambda paths: (path, cfg))
    if pretrained is None:
        return _Plan([], lambda paths: (None, {}))
    import open_clip

    tag = DEFAULT_CLIP_PRETRAINED.get(name) if pretrained == "default" else str(pretrained)
    cfg = dict(open_clip.get_pretrained_cfg(name, tag)) if tag else {}  # a copy: open_clip's stays as it is
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none known to open_clip"
        what = f"Unknown pretrained tag {tag!r}" if tag else "No default pretrained weights are defined"
        raise ValueError(f"{what} for CLIP {clip_name!r}; pass an open_clip tag ({tags}), a file path, or None.")
    cfg["quick_gelu"] = bool(cfg.get("quick_gelu"))
    return _Plan([clip_file(name, tag, cfg["hf_hub"], root)], lambda paths: (paths[0], cfg))


def _cfg_from_config(config_path: Path, keep_model_cfg: bool) -> dict[str, Any]:
    """Preprocessing and QuickGELU (with ``keep_model_cfg``, the architecture) from an open_clip_config.json."""
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    model_cfg = config.get("model_cfg", config)
    cfg = {**config.get("preprocess_cfg", {}), "quick_gelu": bool(model_cfg.get("quick_gelu", False))}
    return {**cfg, "model_cfg": model_cfg} if keep_model_cfg else cfg


def _obtain_all(plans: Sequence[_Plan], progress: ProgressCallback | None, timeout: float = 30) -> list[Any]:
    """Each plan's result, its files found or downloaded; one error lists every file that failed."""
    paths, failures = obtain([file for plan in plans for file in plan.files], progress, timeout)
    if failures:
        errors = [error for _, _, error in failures if error is not None]
        kind = ChecksumMismatchError if any(isinstance(e, ChecksumMismatchError) for e in errors) else None
        raise (kind or WeightsUnavailableError)(_unavailable_message(failures)) from (errors or [None])[0]
    results = []
    for plan in plans:
        results.append(plan.finish(paths[:len(plan.files)]))
        paths = paths[len(plan.files):]
    return results


def _unavailable_message(failures) -> str:
    lines = ["Weights are missing: these files are not on this computer and could not be downloaded. Download "
             "each and save it at the path given (that path is looked at first, before any download):"]
    for file, reason, _ in failures:
        lines += [f"- {file.label}: {reason}", f"    download: {file.url}", f"    save as:  {file.path}"]
        if file.also_accepted:
            lines.append(f"    (or, from the same place: {', '.join(file.also_accepted)} in that folder)")
        lines.append(f"    hash:     {file.known_hash}" if file.known_hash else
                     "    hash:     none pinned by napari-clipsam (the Hub's page of the file shows its sha256)")
    lines.append(
        f"Set {CACHE_ENV_VAR} (or pass cache_dir) to keep weights elsewhere. To try the model out with random "
        "weights instead (no download; its masks then mean nothing): in Python load_model(..., sam_checkpoint=None, "
        "clip_pretrained=None); on the command line --sam-checkpoint none --clip-pretrained none; in the widget "
        f'"{RANDOM_WEIGHTS}" as SAM weights and "none" as CLIP weights.'
    )
    return "\n".join(lines)


def resolve_weights(
    sam: str, sam_checkpoint: str | os.PathLike | None, clip: str, clip_pretrained: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
    clip_file_cfg: Callable[[str, Path], dict[str, Any]] | None = None,
) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """:func:`resolve_sam_checkpoint` and :func:`resolve_clip_checkpoint` at once.

    Every file is looked for on disk before any download; one error lists every file that failed.

    Args:
        clip_file_cfg: ``(clip_name, path) -> cfg`` for a CLIP file that comes without a config
            (the model code knows which network it needs); called before any download.

    Returns:
        ``(sam_path, clip_path, clip_cfg)``.
    """
    root = _root(cache_dir)
    plans = [_plan_sam(sam, sam_checkpoint, root), _plan_clip(clip, clip_pretrained, root, clip_file_cfg)]
    sam_path, (clip_path, clip_cfg) = _obtain_all(plans, progress)
    return sam_path, clip_path, clip_cfg


def resolve_sam_checkpoint(
    variant: str, checkpoint: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> Path | None:
    """The file to load into a SAM of ``variant`` (downloaded if needed); None for random weights.

    Args:
        checkpoint: None (random weights), ``"default"`` (the official checkpoint of ``variant``),
            a registry name (see :func:`list_sam_weights`) or a file path.
    """
    return _obtain_all([_plan_sam(variant, checkpoint, _root(cache_dir))], progress)[0]


def resolve_clip_checkpoint(
    clip_name: str, pretrained: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Path | None, dict[str, Any]]:
    """The weights file of CLIP ``clip_name`` (downloaded if needed) and what builds its network.

    Args:
        clip_name: an open_clip architecture (``"ViT-B-16"``) or ``"hf-hub:org/repo"``.
        pretrained: None (random weights), ``"default"`` (see ``DEFAULT_CLIP_PRETRAINED``; for
            ``hf-hub:`` names the repository's weights), an open_clip tag, or a file path.

    Returns:
        ``(path, cfg)``: open_clip's pretrained cfg (``quick_gelu``, ``mean``, ``std``) where known;
        for ``hf-hub:`` names also ``model_cfg`` (their config is fetched even for random weights).
    """
    return _obtain_all([_plan_clip(clip_name, pretrained, _root(cache_dir))], progress)[0]


def fetch(
    entry: WeightsEntry, cache_dir: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
    timeout: float = 30,
) -> Path:
    """Path of ``entry``'s file in the cache, downloaded and checked if needed.

    Args:
        progress: called as ``progress(bytes_done, bytes_total)`` while downloading.
        timeout: seconds a connection or a read may stall before the download fails.
    """
    return _obtain_all([_Plan([sam_file(entry, cache_dir)])], progress, timeout)[0]


def fetch_weights(
    names: Sequence[str], cache_dir: str | os.PathLike | None = None, progress: ProgressCallback | None = None
) -> list[Path | None]:
    """Each named weights file, found or downloaded; one error lists every file that failed.

    Args:
        names: SAM registry names (``"vit_b_lm"``), or CLIP as ``"MODEL"`` (its default tag),
            ``"MODEL/TAG"`` (``"ViT-B-16/openai"``) or ``"hf-hub:org/repo"``.
    """
    plans = []
    for name in names:
        model, _, tag = name.rpartition("/") if "/" in name and not hub_repo_id(name) else (name, "", "")
        plans.append(_Plan([sam_file(SAM_WEIGHTS[name], cache_dir)]) if name in SAM_WEIGHTS
                     else _plan_clip(model, tag or "default", _root(cache_dir)))
    return [result[0] if isinstance(result, tuple) else result for result in _obtain_all(plans, progress)]


__all__ = [
    "CACHE_ENV_VAR", "DEFAULT_CLIP_PRETRAINED", "DEFAULT_CLIP_WEIGHTS", "DEFAULT_SAM_WEIGHTS", "HF_HUB_PREFIX",
    "RANDOM_WEIGHTS", "SAM_WEIGHTS", "WeightsEntry", "cache_dir", "clip_file", "clip_folder", "fetch", "fetch_weights",
    "hub_repo_id", "list_sam_weights", "parse_weights_choice", "resolve_clip_checkpoint", "resolve_sam_checkpoint",
    "resolve_weights", "sam_file", "weights_path",
]
