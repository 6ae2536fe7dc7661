"""Threads: one model serving several predictors, one predictor shared by several threads.

Interleavings are forced with events (a hook pauses one thread inside the image encoder
while the other runs), never left to the scheduler. Every wait has a generous timeout
only so that a bug shows up as a failure rather than a hung test run.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from tests.helpers import randomize_adapters, two_kinds_image

# Only a safeguard against hanging on a bug: no assertion depends on how long a wait takes.
TIMEOUT = 120.0


@pytest.fixture
def model(tiny_model):
    randomize_adapters(tiny_model)  # zero adapters would hide a wrong concept
    return tiny_model


@pytest.fixture
def jobs(blobs_image):
    """Two jobs that differ in everything a shared model or predictor could mix up."""
    other, _ = two_kinds_image(seed=3)
    return {
        "a": dict(image=blobs_image, concept="nucleus", image_size=None),  # the tiny model's own 256
        "b": dict(image=other, concept="round cell", image_size=128),
    }


def _alone(model, job, predictor=None, **prompts):
    """The job's result computed on its own, no other thread around."""
    if predictor is None:
        predictor = nc.ClipSamPredictor(model, image_size=job["image_size"])
    predictor.set_image(job["image"])
    predictor.set_concept(job["concept"])
    return predictor.predict(**prompts)


def _assert_same(got, expected):
    """The same masks, scores and logits. Floats to rounding only: a thread's torch kernels may split
    their sums differently from the main thread's (seen in the full suite: 4e-8 on a score), while a
    mix-up of two jobs changes them wholesale."""
    for a, b in zip(got, expected):
        if np.asarray(a).dtype == bool:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _wait(event: threading.Event) -> None:
    assert event.wait(TIMEOUT), "the other thread never got there"


def _in_threads(**targets):
    """Run each target in its own thread named by its key; return their results, re-raising any error."""
    results, errors = {}, {}

    def body(name, target):
        try:
            results[name] = target()
        except BaseException as err:  # reported on the test's thread below
            errors[name] = err

    threads = [threading.Thread(target=body, args=item, name=item[0]) for item in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), f"thread {thread.name} hangs"
    for name, err in errors.items():
        raise AssertionError(f"thread {name} failed: {err!r}") from err
    return results


def _pause_in_encoder(model, pauses):
    """Make the last encoder block call ``pauses[thread name]()`` once per thread, before it runs.

    The last block is in the concept-dependent part, so the pause falls while the thread's
    SAM input size is in force and its conditioning is on its way through the blocks.
    """
    paused = set()

    def hook(module, args):
        name = threading.current_thread().name
        if name in pauses and name not in paused:
            paused.add(name)
            pauses[name]()

    return model.sam.image_encoder.blocks[-1].register_forward_pre_hook(hook)


# ------------------------------------------------------------ one model, two predictors
def test_two_predictors_interleaved_inside_the_encoder_give_their_own_results(model, jobs):
    """a (native size) pauses mid-encoder; b (size 128, other image and concept) runs up to the
    same point; a then finishes, decoding while b's pass is half done; then b finishes."""
    expected = {name: _alone(model, job) for name, job in jobs.items()}
    a_paused, b_paused, a_done = threading.Event(), threading.Event(), threading.Event()

    def pause_a():
        a_paused.set()
        _wait(b_paused)

    def pause_b():
        b_paused.set()
        _wait(a_done)

    def run_a():
        try:
            return _alone(model, jobs["a"])
        finally:
            a_done.set()

    def run_b():
        _wait(a_paused)
        return _alone(model, jobs["b"])

    handle = _pause_in_encoder(model, {"a": pause_a, "b": pause_b})
    try:
        got = _in_threads(a=run_a, b=run_b)
    finally:
        handle.remove()
    assert got.keys() == {"a", "b"}
    for name in jobs:
        _assert_same(got[name], expected[name])
    assert model.image_size == 256 and model.mask_input_size == (64, 64)


def test_a_size_set_in_one_thread_is_not_seen_in_another(model, blobs_image):
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def hold():
        with model.at_resolution(128):
            seen["size"] = (model.image_size, model.mask_input_size)
            inside.set()
            _wait(release)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        _wait(inside)
        sam_input, input_size = model.sam_input(nc.to_rgb_uint8(blobs_image))
        assert model.image_size == 256 and model.mask_input_size == (64, 64)
        assert sam_input.shape == (1, 3, 256, 256) and input_size == (192, 256)
    finally:
        release.set()
        thread.join(TIMEOUT)
    assert seen["size"] == (128, (32, 32))


def test_checkpointed_blocks_recompute_with_the_conditioning_of_their_forward_pass(model, blobs_image):
    """Backward runs the recomputation where autograd chooses (its own thread on a GPU):
    here a fresh thread, which has only what the checkpointed calls kept, and the gradients are unchanged."""
    sam_input, _ = model.sam_input(nc.to_rgb_uint8(blobs_image))
    _, patches = model.clip_features(model.clip_input(nc.to_rgb_uint8(blobs_image)))
    text = model.text_embedding("nucleus")[None]
    conditioning = model.conditioning(text, patches, model.similarity(patches, text))
    parameters = [p for adapter in model.adapters for p in adapter.parameters()]
    gradients = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        embedding = model.encode_image(sam_input, conditioning, checkpointing)
        loss = (embedding**2).mean()
        _in_threads(backward=loss.backward)
        gradients.append([p.grad.clone() for p in parameters])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------- one predictor, two threads
class _ContentionSignal:
    """The predictor's lock, made to set ``event`` when a thread has to wait for it."""

    def __init__(self, lock, event: threading.Event) -> None:
        self._lock = lock
        self.event = event

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self.event.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()


def test_a_call_from_another_thread_waits_for_the_running_call(model, jobs, monkeypatch):
    """b replaces the image while a's predict is inside the encoder: b's call waits, and a's
    masks are of a's image (today's code mixed the two or crashed)."""
    expected = {name: _alone(model, job) for name, job in jobs.items()}
    predictor = nc.ClipSamPredictor(model)
    # Set when b waits for the predictor, or (the bug) when b's set_image went through.
    b_moved = threading.Event()
    monkeypatch.setattr(predictor, "_lock", _ContentionSignal(predictor._lock, b_moved))
    a_paused = threading.Event()

    def pause_a():
        a_paused.set()
        _wait(b_moved)

    def run_b():
        _wait(a_paused)
        predictor.set_image(jobs["b"]["image"])
        b_moved.set()
        predictor.set_concept(jobs["b"]["concept"])
        return predictor.predict()

    handle = _pause_in_encoder(model, {"a": pause_a})
    try:
        got = _in_threads(a=lambda: _alone(model, jobs["a"], predictor), b=run_b)
    finally:
        handle.remove()
    _assert_same(got["a"], expected["a"])
    _assert_same(got["b"], _alone(model, {**jobs["b"], "image_size": None}))


def test_a_thread_whose_image_another_thread_replaced_gets_an_error_not_those_masks(model, jobs):
    expected = _alone(model, jobs["a"])
    predictor = nc.ClipSamPredictor(model)
    a_set, b_done = threading.Event(), threading.Event()

    def run_a():
        predictor.set_image(jobs["a"]["image"])
        predictor.set_concept(jobs["a"]["concept"])
        a_set.set()
        _wait(b_done)
        with pytest.raises(nc.ConcurrentUseError, match="(?i)another thread"):
            predictor.predict()
        with pytest.raises(nc.ConcurrentUseError):
            predictor.similarity_map()
        return _alone(model, jobs["a"], predictor)  # setting them again takes the predictor back

    def run_b():
        _wait(a_set)
        try:
            predictor.set_image(jobs["b"]["image"])
            return predictor.predict(point_coords=[[20, 20]])  # b's image, a's concept: what b set and saw
        finally:
            b_done.set()

    got = _in_threads(a=run_a, b=run_b)
    _assert_same(got["a"], expected)
    alone = nc.ClipSamPredictor(model)
    alone.set_image(jobs["b"]["image"])
    alone.set_concept(jobs["a"]["concept"])
    _assert_same(got["b"], alone.predict(point_coords=[[20, 20]]))


@pytest.mark.parametrize("preparer_set_the_image", [True, False])
def test_preparing_stops_with_an_error_when_another_thread_replaces_the_image(model, jobs, preparer_set_the_image):
    """Stages are held one at a time; b replaces the image between two of a's stages."""
    predictor = nc.ClipSamPredictor(model)

    def set_a():
        predictor.set_image(jobs["a"]["image"])
        predictor.set_concept(jobs["a"]["concept"])

    if preparer_set_the_image:
        set_a()
    else:
        _in_threads(setter=set_a)  # this thread only runs the stages of what is set
    stages = predictor.iter_prepare()
    assert next(stages) == predictor.STAGE_IMAGE
    _in_threads(b=lambda: predictor.set_image(jobs["b"]["image"]))
    with pytest.raises(nc.ConcurrentUseError, match="(?i)another thread"):
        list(stages)


def test_threads_taking_turns_as_the_widget_does_raise_nothing(model, jobs):
    """Each job sets its image and concept and predicts, one job at a time, on whichever
    thread is free; the size is set between jobs on another thread."""
    expected = {name: _alone(model, {**job, "image_size": None}) for name, job in jobs.items()}
    predictor = nc.ClipSamPredictor(model)
    for turn, name in enumerate(("a", "b", "a", "b")):
        predictor.image_size = None
        got = _in_threads(**{f"worker{turn % 2}": lambda name=name: _alone(model, jobs[name], predictor)})
        _assert_same(got[f"worker{turn % 2}"], expected[name])
    # A thread that set nothing reads what is set.
    got = _in_threads(reader=predictor.predict)
    _assert_same(got["reader"], expected["b"])


def test_one_predictor_hammered_from_two_threads_never_returns_the_other_threads_masks(model, jobs):
    """Unsynchronised calls give a thread its own result or ConcurrentUseError; a sequence
    inside ``with predictor:`` always gives its own result."""
    expected = {name: _alone(model, {**job, "image_size": None}) for name, job in jobs.items()}
    predictor = nc.ClipSamPredictor(model)
    start = threading.Barrier(2, timeout=TIMEOUT)

    def hammer(name):
        outcomes = []
        start.wait()
        for _ in range(4):
            try:
                _assert_same(_alone(model, jobs[name], predictor), expected[name])
                outcomes.append("own")
            except nc.ConcurrentUseError:
                outcomes.append("error")
            with predictor:
                _assert_same(_alone(model, jobs[name], predictor), expected[name])
        return outcomes

    got = _in_threads(a=lambda: hammer("a"), b=lambda: hammer("b"))
    assert all(set(outcomes) <= {"own", "error"} for outcomes in got.values())
