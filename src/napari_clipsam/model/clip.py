"""CLIP through open_clip: names, model building and tokenizers (features: ``surgery.py``)."""

from __future__ import annotations

import json
import logging
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import open_clip
from torch import nn

from ..errors import AmbiguousWeightsError, MissingDependencyError
from ..weights.registry import HUB_CONFIG_NAME, clip_folder, hub_repo_id, resolve_clip_checkpoint

# Our names for our own small architectures (the test model's and the demo model's), and
# the names they are registered under in open_clip's model-config registry (so that they
# are built by open_clip's own factory).
TINY_CLIP = "tiny"
DEMO_CLIP = "demo"
_OWN_OPEN_CLIP_NAMES = {TINY_CLIP: "clipsam-tiny", DEMO_CLIP: "clipsam-demo"}


def _open_clip_name(name: str) -> str:
    own = _OWN_OPEN_CLIP_NAMES.get(name)
    if own is None:
        return name
    if own not in open_clip.list_models():
        open_clip.add_model_config(str(files("napari_clipsam") / "model_configs" / f"{own}.json"))
    return own


def list_clip_models() -> list[str]:
    """CLIP architectures that can be built (open_clip's names, plus ``"tiny"`` and ``"demo"``)."""
    return [*_OWN_OPEN_CLIP_NAMES, *open_clip.list_models()]


def _require_transformers(name: str, text_cfg: dict[str, Any]) -> None:
    """Raise MissingDependencyError if ``text_cfg`` names a Hugging Face text tower or
    tokenizer and ``transformers`` is not installed."""
    hf_name = text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"CLIP {name!r} has a Hugging Face text tower ({hf_name}), which needs the "
            "'transformers' package: pip install transformers"
        ) from err


def clip_file_cfg(name: str, path: Path, cache_dir=None) -> dict[str, Any]:
    """The pretrained cfg of the network that the CLIP weights at ``path`` (no config beside them) need.

    The file's folder may name its tag (``<cache>/clip/<model>_<tag>/``): that tag's cfg.
    Otherwise ``{"quick_gelu": ...}`` as the name decides: ``-quickgelu`` names, and names whose
    known pretrained tags all agree (names without tags, such as ``"tiny"``, keep their config's).

    Raises:
        AmbiguousWeightsError: the name's tags disagree (ViT-B-16: OpenAI's weights need QuickGELU,
            LAION's GELU), so the file could be for either network.
    """
    cfgs = {tag: open_clip.get_pretrained_cfg(name, tag) for tag in open_clip.list_pretrained_tags_by_model(name)}
    quick = {tag: bool(cfg.get("quick_gelu")) for tag, cfg in cfgs.items()}
    for tag, cfg in cfgs.items():
        if Path(path).parent == clip_folder(name, tag, cache_dir):
            return {**cfg, "quick_gelu": quick[tag]}
    if name.endswith("-quickgelu") or len(set(quick.values())) <= 1:
        return {"quick_gelu": name.endswith("-quickgelu") or any(quick.values())}
    variant, example = f"{name}-quickgelu", next(tag for tag, is_quick in quick.items() if is_quick)
    by_name = f"pass clip={variant!r} for OpenAI's weights (QuickGELU); " if variant in open_clip.list_models() else ""
    raise AmbiguousWeightsError(
        f"The CLIP weights {path} could be for either {name} network: open_clip builds {name} with QuickGELU for "
        f"the tags {', '.join(t for t, q in quick.items() if q)} and with GELU for the tags "
        f"{', '.join(t for t, q in quick.items() if not q)}, and nothing tells which the file is. Say it: {by_name}"
        f"or put the model repository's {HUB_CONFIG_NAME} beside the file; or move the file into its tag's folder, "
        f"such as {clip_folder(name, example, cache_dir)} for {example!r}, and pass the tag "
        f"(clip_pretrained={example!r})."
    )


class _NoRandomInitWarning(logging.Filter):
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly": we load the weights next,
    and users of the demo model read it as a broken model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _create_open_clip(open_clip_name: str, quick_gelu: bool) -> nn.Module:
    # pretrained_text=False: open_clip would otherwise download a Hugging Face text
    # tower's base weights, which the CLIP checkpoint loaded afterwards replaces.
    quiet = _NoRandomInitWarning()
    root = logging.getLogger()  # open_clip logs through the root logger
    root.addFilter(quiet)
    try:
        return open_clip.create_model(
            open_clip_name,
            pretrained=None,
            load_weights=False,
            pretrained_image=False,
            pretrained_text=False,
            force_quick_gelu=quick_gelu,
            precision="fp32",
            device="cpu",
        )
    finally:
        root.removeFilter(quiet)


def build_clip(
    name: str,
    quick_gelu: bool = False,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a randomly initialised open_clip model by name (weights are loaded apart).

    Args:
        name: open_clip model name, an ``hf-hub:`` name, or ``"tiny"``.
        quick_gelu: force QuickGELU activations (OpenAI-trained weights need them).
        model_cfg: the model's open_clip config (the ``model_cfg`` of an
            ``open_clip_config.json``) if already in hand; the model is then built from
            it with no network call. Without it an ``hf-hub:`` name fetches its
            ``open_clip_config.json`` into the weights cache (never the weights).
        preprocess_cfg: image preprocessing of the weights to be loaded (``mean``,
            ``std``, ...; other keys are ignored), as ``resolve_clip_checkpoint``'s cfg
            gives it; it becomes ``model.visual.image_mean``/``image_std``. Without it,
            the config's own (``hf-hub:``) or open_clip's defaults (OpenAI's).

    Raises:
        MissingDependencyError: the model has a Hugging Face text tower (BiomedCLIP)
            and ``transformers`` is not installed.

    A Hugging Face text tower still reads its ``config.json`` through ``transformers``
    (from the Hugging Face cache, or the network).
    """
    open_clip_name = _open_clip_name(name)
    if model_cfg is None and hub_repo_id(name):
        # Only the repository's open_clip_config.json: open_clip's own create_model would
        # download the weights too, even with load_weights=False.
        _, hub_cfg = resolve_clip_checkpoint(name, None)
        model_cfg, preprocess_cfg = hub_cfg["model_cfg"], {**hub_cfg, **(preprocess_cfg or {})}
    if model_cfg is None:
        if not open_clip_name.startswith("local-dir:") and open_clip_name not in open_clip.list_models():
            raise ValueError(
                f"Unknown CLIP model {name!r}. Use one of open_clip.list_models() "
                "(for example 'ViT-B-16'), an 'hf-hub:' name, or 'tiny'."
            )
        model = _create_open_clip(open_clip_name, quick_gelu)
    else:
        _require_transformers(name, model_cfg.get("text_cfg", {}))
        # open_clip's public route for a config in hand is a 'local-dir:' folder; with
        # no weights file in it and load_weights=False nothing is read but the config.
        with tempfile.TemporaryDirectory(prefix="napari-clipsam-") as folder:
            config_path = Path(folder) / HUB_CONFIG_NAME
            config_path.write_text(json.dumps({"model_cfg": model_cfg}), encoding="utf-8")
            model = _create_open_clip(f"local-dir:{folder}", quick_gelu)
    if preprocess_cfg:
        merged = open_clip.transform.merge_preprocess_dict(
            open_clip.get_model_preprocess_cfg(model), preprocess_cfg
        )
        open_clip.set_model_preprocess_cfg(model, merged)
    model.eval()
    return model


def get_tokenizer(name: str, model_cfg: dict[str, Any] | None = None):
    """open_clip's tokenizer for CLIP ``name``.

    With ``model_cfg`` (see ``build_clip``) an ``hf-hub:`` name needs no config fetch;
    a Hugging Face tokenizer still reads its files through ``transformers``.
    """
    open_clip_name = _open_clip_name(name)
    if model_cfg is None and hub_repo_id(name):
        model_cfg = resolve_clip_checkpoint(name, None)[1]["model_cfg"]  # the config only, into our cache
    if model_cfg is not None and hub_repo_id(name):
        text_cfg = model_cfg.get("text_cfg", {})
        context_length = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
        kwargs = text_cfg.get("tokenizer_kwargs") or {}
        if text_cfg.get("hf_tokenizer_name"):
            _require_transformers(name, text_cfg)
            return open_clip.tokenizer.HFTokenizer(
                text_cfg["hf_tokenizer_name"],
                context_length=context_length,
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                **kwargs,
            )
        return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)
    try:
        return open_clip.get_tokenizer(open_clip_name)
    except ImportError as err:
        if "transformers" not in str(err):
            raise
        raise MissingDependencyError(
            f"CLIP {name!r} has a Hugging Face tokenizer, which needs the 'transformers' "
            "package: pip install transformers"
        ) from err
