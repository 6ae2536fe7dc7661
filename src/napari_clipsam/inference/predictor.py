"""Predictor with explicit state: ``set_image`` -> ``set_concept`` -> ``predict``."""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ConcurrentUseError
from ..model.clipsam import ClipSamModel
from ..model.memory import release_free_memory
from ..model.refine import refine_logits
from .fast_masks import masks_at_image_size
from .features import ImageFeatures
from .image import to_rgb_uint8
from .prompts import check_prompts, normalise_concept
from .recent_images import DEFAULT_IMAGES_KEPT, RecentImages, StoreLike
from .sam_frame import mask_prompt_from_logits, mask_prompt_from_similarity, resize_map, text_mode_points, to_sam_frame

_ADVICE = ("Give each thread its own ClipSamPredictor (they can share one model), or hold "
           "`with predictor:` around each set_image -> set_concept -> predict sequence.")


class _Claims(threading.local):
    """What the current thread last set on a predictor: its image digest, concept, size."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}


class ClipSamPredictor:
    """Segment one image by concept, points and boxes, caching everything reusable.

    CLIP features are computed once per image, text embeddings once per concept (in
    the model), and SAM's image embedding once per (image, concept): setting the same
    image or concept again costs nothing, and a new point costs only the decoder.
    Loading or training adapters on the model makes the next call recompute them.
    Coordinates are XY pixels of the image given to :meth:`set_image`; boxes XYXY.

    Threads: calls are serialised (a call waits for another thread's to end). A thread
    whose image, concept or size another thread has since replaced gets
    :class:`ConcurrentUseError` from its next call rather than the other image's masks;
    ``with predictor:`` holds the predictor for a whole sequence of calls.
    """

    # True: upsample SAM's logits over the whole image (the reference, for tests and
    # benchmarks); False: only where a mask can be, same masks (``fast_masks.py``).
    full_resolution_masks = False

    def __init__(self, model: ClipSamModel, image_size: int | None = None,
                 images_kept: int = DEFAULT_IMAGES_KEPT, embedding_cache: StoreLike = None) -> None:
        """Args:
            model: from :func:`load_model`.
            image_size: SAM input side in pixels. None: the size the model's adapters
                were trained at (``model.preferred_image_size``, from the adapters file),
                else SAM's own (1024). Smaller is faster on a CPU (see
                :meth:`ClipSamModel.at_resolution`).
            images_kept: how many earlier images' features to keep, so that setting one
                of them again (a plane revisited) costs nothing (``inference/recent_images.py``).
            embedding_cache: a folder (or ``EmbeddingStore``) that also keeps features on disk,
                so that an image reopened in a later session skips the encoders.
        """
        self.model = model
        self._image_size = image_size
        # Serialises calls; re-entrant because calls call each other (predict -> prepare).
        self._lock = threading.RLock()
        self._claims = _Claims()
        # Features of the last few images (revisiting one costs nothing), and on disk with a cache.
        self.recent_images = RecentImages(images_kept, store=embedding_cache)
        self._drop_image()
        self.concept: str | None = None

    def __enter__(self) -> ClipSamPredictor:
        """Hold the predictor for a sequence of calls: other threads' calls wait until the block ends."""
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    @property
    def image_size(self) -> int | None:
        """The SAM input side this predictor runs at (None: SAM's own)."""
        return self._image_size if self._image_size is not None else self.model.preferred_image_size

    @image_size.setter
    def image_size(self, value: int | None) -> None:
        with self._lock:
            if value != self._image_size:
                self._image_size = value
                self._forget_features()  # computed at the old size; the image stays set
            self._claims.values["size"] = value

    # ------------------------------------------------------------------ state
    def reset_image(self) -> None:
        """Forget the image and everything computed from it."""
        with self._lock:
            self._drop_image()
            self._claims.values["image"] = None

    def _drop_image(self) -> None:
        self.image: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self._image_key: str | None = None
        self._forget_features()

    def _forget_features(self) -> None:
        # What is computed from the current image, at the current size and weights (features.py).
        self.features = ImageFeatures(self.model.weights_version, self.image_size)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The image's (H, W) once resized for SAM; None until its first stage ran."""
        return self.features.input_size

    @property
    def image_digest(self) -> str | None:
        """The current image's content digest (None: no image), the key of its features."""
        return self._image_key

    @property
    def is_image_set(self) -> bool:
        return self.image is not None

    def set_image(self, image, channel: int | None = None) -> None:
        """Set the image to segment: (H, W) or (H, W, C), any numeric dtype.

        See :func:`napari_clipsam.to_rgb_uint8` for the conversion. Setting an image
        equal to the current one keeps all cached features.
        """
        rgb = to_rgb_uint8(image, channel=channel)
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16)
        key.update(repr(rgb.shape).encode())
        digest = key.hexdigest()
        with self._lock:
            self._claims.values["image"] = digest
            if digest == self._image_key:
                return
            kept = self.recent_images.take(digest, self.model.weights_version, self.image_size)
            if self.image is not None:  # taken first: keeping this image must not push the new one out
                self.recent_images.keep(self._image_key, self.image, self.features)
            if kept is None:
                self._drop_image()
                self.image = rgb
            else:
                self.image, self.features = kept
            self.original_size = self.image.shape[:2]
            self._image_key = digest

    def set_concept(self, concept: str | None) -> None:
        """Set the concept that conditions the encoder; None for plain SAM behaviour."""
        if concept is not None:
            if not isinstance(concept, str):
                raise TypeError(f"The concept must be a string or None, got {type(concept).__name__}.")
            concept = normalise_concept(concept)
        with self._lock:
            self.concept = concept
            self._claims.values["concept"] = concept

    # ---------------------------------------------------------------- threads
    def _state(self) -> tuple:
        """What every computed feature depends on."""
        return self._image_key, self.concept, self.image_size, self.features.weights_version

    @contextmanager
    def _checked(self) -> Iterator[None]:
        """Hold the predictor, after checking that what this thread set is still set.

        A thread that set an image (concept, size) means its next calls to be about it;
        if another thread has replaced it, computing anyway would return that thread's
        masks. A thread that set nothing takes the state as it is (a worker handed a
        prepared predictor).
        """
        with self._lock:
            current = {"image": self._image_key, "concept": self.concept, "size": self._image_size}
            changed = [name for name, value in self._claims.values.items() if current[name] != value]
            if changed:
                raise ConcurrentUseError(
                    f"Another thread changed this predictor's {' and '.join(changed)} since this thread set "
                    f"it; nothing was computed. Set it again to go on. {_ADVICE}"
                )
            yield

    # ----------------------------------------------------------- computation
    def _require_image(self) -> None:
        if self.image is None:
            raise RuntimeError("Set an image with set_image(...) before predicting.")

    # Names of the stages of :meth:`iter_prepare`.
    STAGE_IMAGE = "preparing image"
    STAGE_CLIP = "CLIP image features"
    STAGE_TEXT = "text embedding"
    STAGE_PREFIX = "image encoder"
    STAGE_CONDITIONED = "image encoder (concept)"
    STAGE_UNCONDITIONED = "image encoder (no concept)"

    def pending_stages(self) -> list[str]:
        """The stages the current image and concept still need, in order (cached ones left out)."""
        with self._checked():
            self._require_image()
            if not self.features.valid_for(self.model.weights_version, self.image_size):
                self._forget_features()  # adapters loaded or trained since: every feature is stale
            concept, features = self.concept, self.features
            if concept not in features.embeddings:
                self.recent_images.load(self, self._image_key, concept)  # stored on disk by an earlier session
            stages = []
            if features.sam_input is None:
                stages.append(self.STAGE_IMAGE)
            if concept is not None and features.clip_patches is None:
                stages.append(self.STAGE_CLIP)
            if concept is not None and concept not in features.similarity:
                stages.append(self.STAGE_TEXT)
            if concept not in features.embeddings:
                if features.prefix is None:
                    stages.append(self.STAGE_PREFIX)
                stages.append(self.STAGE_UNCONDITIONED if concept is None else self.STAGE_CONDITIONED)
            return stages

    @torch.no_grad()
    def _run_stage(self, stage: str) -> None:
        model, concept, features = self.model, self.concept, self.features
        if stage == self.STAGE_IMAGE:
            features.sam_input, features.input_size = model.sam_input(self.image)
        elif stage == self.STAGE_CLIP:
            _, features.clip_patches = model.clip_features(model.clip_input(self.image))
        elif stage == self.STAGE_TEXT:
            text = model.text_embedding(concept)
            features.similarity[concept] = model.similarity(features.clip_patches, text[None])
        elif stage == self.STAGE_PREFIX:
            features.prefix = model.encoder_prefix(features.sam_input)
        else:
            conditioning = None
            if concept is not None:
                conditioning = model.conditioning(
                    model.text_embedding(concept), features.clip_patches, features.similarity[concept]
                )
            features.add_embedding(concept, model.encoder_suffix(features.prefix, conditioning))
            self.recent_images.persist(self, self._image_key)  # on disk now: outlives this process

    def iter_prepare(self) -> Iterator[str]:
        """Compute what the current image and concept need, one named stage at a time.

        Yields the name of each stage before running it, so a caller (the napari
        widget) can report progress and stop between stages. Cached stages are skipped.
        The predictor is held for each stage, not between them: should another thread
        (or call) change the image, concept or size there, the next stage raises
        :class:`ConcurrentUseError`.
        """
        with self._checked():
            if self.concept in self.features.embeddings:
                self.features.embeddings.move_to_end(self.concept)
            stages, state = self.pending_stages(), self._state()
        for stage in stages:
            yield stage
            with self._checked():
                if self._state() != state:
                    raise ConcurrentUseError(
                        "This predictor's image, concept, size or weights changed while it was being "
                        f"prepared, by another thread or call; the stages left were not run. {_ADVICE}"
                    )
                with self.model.at_resolution(self.image_size):
                    self._run_stage(stage)
                release_free_memory()  # what the stage freed, back to the system (model/memory.py)

    def prepare(self) -> None:
        """Run :meth:`iter_prepare` to the end."""
        for _ in self.iter_prepare():
            pass

    @property
    def image_embedding(self) -> torch.Tensor:
        """SAM's (1, 256, 64, 64) image embedding for the current image and concept."""
        with self._checked():
            self.prepare()
            return self.features.embeddings[self.concept]

    def _similarity_grid(self) -> torch.Tensor:
        if self.concept is None:
            raise RuntimeError("Set a concept with set_concept(...) to get a similarity map.")
        self.prepare()
        return self.features.similarity[self.concept]

    def similarity_map(self) -> np.ndarray:
        """(H, W) float32 similarity of the image to the concept, in [0, 1]."""
        with self._checked():
            grid = self._similarity_grid()
            return resize_map(grid, self.original_size)[0].clamp(0, 1).cpu().numpy().astype(np.float32)

    def text_prompts(self) -> tuple[np.ndarray, np.ndarray]:
        """The text-only mode's points: (N, 2) XY image coordinates and (N,) labels (all 1)."""
        with self._checked():
            return text_mode_points(self._similarity_grid(), self.original_size, self.model.config)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        multimask_output: bool = False,
        mask_input: np.ndarray | None = None,
        use_similarity_prompt: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for the current image and concept.

        With no points and no box and a concept set, prompts come from CLIP (text-only
        mode: :meth:`text_prompts`, and the thresholded map as mask prompt). With points
        and/or a box it is the manual mode; the concept still conditions the encoder
        and, if configured, the similarity mask prompt stays on. With no concept, it is
        plain SAM.

        Args:
            point_coords: (N, 2) XY pixel coordinates.
            point_labels: (N,) 1 for foreground, 0 for background (default: all 1).
            box: (4,) XYXY box in pixels.
            multimask_output: return SAM's three candidate masks instead of one.
            mask_input: (1, 256, 256) low-resolution logits from a previous call;
                replaces the similarity mask prompt.
            use_similarity_prompt: override ``config.similarity_mask_prompt``.

        Returns:
            masks: (C, H, W) bool at the image's size.
            scores: (C,) float32 predicted IoU.
            logits: (C, 256, 256) float32 low-resolution logits (side 4x the embedding grid), or, from a
                model with a mask refiner (the demo model), refined at SAM's input frame (C, S, S).
        """
        points, labels, box = check_prompts(point_coords, point_labels, box)
        model = self.model
        with self._checked(), torch.no_grad(), model.at_resolution(self.image_size):
            self._require_image()
            if points is None and box is None and self.concept is None:
                raise ValueError(
                    "Nothing to segment: give points or a box, or set a concept with "
                    "set_concept(...) for the text-only mode."
                )
            if points is None and box is None:
                points, labels = self.text_prompts()
            self.prepare()
            point_prompt, box_prompt = to_sam_frame(
                points, labels, box, self.original_size, model.image_size, model.device
            )
            mask_prompt = None
            if mask_input is not None:
                mask_prompt = mask_prompt_from_logits(mask_input, model.mask_input_size, model.device, model.image_size)
            elif use_similarity_prompt is None or use_similarity_prompt:
                mask_prompt = self.similarity_mask_prompt(force=bool(use_similarity_prompt))
            masks, iou, low_res = self.predict_torch(point_prompt, box_prompt, mask_prompt, multimask_output)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def similarity_mask_prompt(self, force: bool = False) -> torch.Tensor | None:
        """The text-only mode's dense prompt (1, 1, 256, 256): the thresholded map scaled to {0, 255}.

        None without a concept, or when ``config.similarity_mask_prompt`` is off and not ``force``.
        """
        model = self.model
        with self._checked(), model.at_resolution(self.image_size):
            if self.concept is None or not (force or model.config.similarity_mask_prompt):
                return None
            self.prepare()
            prompts = self.features.mask_prompts
            if self.concept not in prompts:
                prompts[self.concept] = mask_prompt_from_similarity(
                    self.features.similarity[self.concept], model.config.similarity_threshold, self.input_size,
                    model.image_size, model.mask_input_size,
                )
            return prompts[self.concept]

    def predict_torch(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_prompt: torch.Tensor | None,
        multimask_output: bool = False,
        refine: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode prompts already in SAM's input frame (see :func:`to_sam_frame`), as tensors.

        Args:
            points: ``(coords (B, N, 2) XY, labels (B, N))`` or None.
            boxes: (B, 4) XYXY or None.
            mask_prompt: (B, 1, 256, 256) dense prompt or None.
            refine: refine the logits if the model has a mask refiner; False: the decoder's (cheaper).

        Returns:
            masks (B, C, H, W) bool at the image's size, predicted IoU (B, C), low-resolution
            logits (B, C, 256, 256), or refined ones at SAM's input frame (B, C, S, S).
        """
        model = self.model
        with self._checked(), model.at_resolution(self.image_size):
            self.prepare()
            low_res, iou = self.features.decoder.decode(model, self.features.embeddings[self.concept], points, boxes,
                                                        mask_prompt, multimask_output)
            if refine:
                low_res = refine_logits(model, low_res, self.features.sam_input)
            masks = masks_at_image_size(low_res, model.image_size, self.input_size, self.original_size,
                                        model.sam.mask_threshold, self.full_resolution_masks)
        return masks, iou, low_res
