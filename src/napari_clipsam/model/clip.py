"""CLIP through open_clip: names, model building and tokenizers (features: ``surgery.py``)."""

from __future__ import annotations

import json
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import open_clip
from torch import nn

from ..errors import MissingDependencyError

# Our name for the small test architecture, and the name it is registered under in
# open_clip's model-config registry (so that it is built by open_clip's own factory).
TINY_CLIP = "tiny"
_TINY_OPEN_CLIP_NAME = "clipsam-tiny"
_HF_HUB_PREFIX = "hf-hub:"
_HF_CONFIG_NAME = "open_clip_config.json"


def _open_clip_name(name: str) -> str:
    if name == TINY_CLIP:
        if _TINY_OPEN_CLIP_NAME not in open_clip.list_models():
            config_path = files("napari_clipsam") / "model_configs" / f"{_TINY_OPEN_CLIP_NAME}.json"
            open_clip.add_model_config(str(config_path))
        return _TINY_OPEN_CLIP_NAME
    return name


def list_clip_models() -> list[str]:
    """CLIP architectures that can be built (open_clip's names, plus ``"tiny"``)."""
    return [TINY_CLIP, *open_clip.list_models()]


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


def _hub_model_config(open_clip_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_cfg, preprocess_cfg)`` from an ``hf-hub:`` repository's open_clip_config.json.

    Fetches only that small file: open_clip's own ``create_model`` would also download
    the weights for an ``hf-hub:`` name, even with ``load_weights=False``.
    """
    from open_clip.pretrained import download_pretrained_from_hf

    repo_id = open_clip_name[len(_HF_HUB_PREFIX) :]
    path = download_pretrained_from_hf(repo_id, filename=_HF_CONFIG_NAME)
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    return config.get("model_cfg", config), config.get("preprocess_cfg", {})


def _create_open_clip(open_clip_name: str, quick_gelu: bool) -> nn.Module:
    # pretrained_text=False: open_clip would otherwise download a Hugging Face text
    # tower's base weights, which the CLIP checkpoint loaded afterwards replaces.
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
            ``open_clip_config.json`` (never the weights).
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
    if model_cfg is None and open_clip_name.startswith(_HF_HUB_PREFIX):
        model_cfg, hub_preprocess_cfg = _hub_model_config(open_clip_name)
        preprocess_cfg = {**hub_preprocess_cfg, **(preprocess_cfg or {})}
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
            config_path = Path(folder) / _HF_CONFIG_NAME
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
    if model_cfg is not None and open_clip_name.startswith(_HF_HUB_PREFIX):
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
