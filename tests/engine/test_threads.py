"""Passes split over threads (engine/threads.py): the same results as one pass.

The unit tests force two threads and arrays above the split threshold; the
layer test runs a MobileNet-style block on an input large enough to be split
and compares its training-mode gradients with Keras', per tensor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from gradcheck import GRAD_RTOL, check_layer_grad, engine_grads, keras_grads, relative_error
from helpers import FLAVORS, build_model, make_input, save

import kerascheck
from kerascheck.engine import activations, threads

LARGE = (4, 64, 64, 24)  # 393,216 elements: above threads.MIN_ELEMENTS


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv("KERASCHECK_THREADS", "2")
    assert threads.thread_count() == 2


def test_blocks_cover_the_range_once(two_threads):
    for length in (1, 2, 3, 7, 64):
        parts = threads.blocks(length, threads.MIN_ELEMENTS)
        covered = np.concatenate([np.arange(length)[p] for p in parts])
        assert covered.tolist() == list(range(length))
        assert len(parts) == min(2, length)
    assert len(threads.blocks(64, threads.MIN_ELEMENTS - 1)) == 1  # small: not split


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("KERASCHECK_THREADS", "3")
    assert threads.thread_count() == 3
    monkeypatch.setenv("KERASCHECK_THREADS", "none")  # not a count: the cores
    assert threads.thread_count() >= 1


@pytest.mark.parametrize("shape", [LARGE, (1, 300, 300, 4)])  # a batch of 1 splits rows
def test_elementwise_with_broadcast_operands(two_threads, shape):
    x = make_input(shape)
    shift = make_input((1, 1, 1, shape[-1]), seed=1)
    out = threads.elementwise(np.subtract, np.empty_like(x), x, shift)
    np.testing.assert_array_equal(out, x - shift)


def test_chunked_matches_the_whole_array(two_threads):
    x, dy = make_input(LARGE), make_input(LARGE, seed=1)
    y = activations.swish(x)
    derivative = activations.DERIVATIVES[activations.swish]
    np.testing.assert_array_equal(threads.chunked(activations.swish, x), y)
    np.testing.assert_array_equal(threads.chunked(derivative, x, None, dy), derivative(x, None, dy))
    assert threads.chunked(np.add, x, x[:1]).shape == LARGE  # shapes differ: one call


def test_block_sum_adds_partial_sums(two_threads):
    x = make_input(LARGE).astype(np.float64)
    parts = threads.blocks(x.shape[0], x.size)
    total, squares = threads.block_sum(
        lambda p: (np.sum(x[p], axis=(0, 1, 2)), np.sum(x[p] ** 2, axis=(0, 1, 2))), parts
    )
    np.testing.assert_allclose(total, x.sum(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(squares, (x**2).sum(axis=(0, 1, 2)), rtol=1e-12)


def test_a_split_pass_inside_a_split_pass_runs_in_its_thread(two_threads):
    """relu splits its clip; run piece by piece by `chunked`, it must not wait for the
    threads its caller holds (it did, forever)."""
    x = make_input(LARGE)
    result = []
    worker = threading.Thread(target=lambda: result.append(threads.chunked(activations.relu, x)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "nested split passes deadlocked"
    np.testing.assert_array_equal(result[0], np.maximum(x, 0))


def test_a_worker_error_reaches_the_caller(two_threads):
    def fail_second(part):
        if part.start > 0:
            raise ValueError("second block")
        return 0

    with pytest.raises(ValueError, match="second block"):
        threads.over_blocks(fail_second, threads.blocks(4, threads.MIN_ELEMENTS))


def test_workers_see_the_callers_errstate(two_threads):
    x = np.full(LARGE, 100.0, np.float32)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        threads.chunked(np.exp, x)
    with np.errstate(over="ignore"):
        assert np.isinf(threads.chunked(np.exp, x)).all()


@pytest.mark.parametrize("preset, expected", [(None, "18"), ("30", "30")])
def test_openblas_idle_threads_sleep_from_the_start(preset, expected):
    """`import kerascheck` sets OpenBLAS' thread timeout before NumPy is loaded (the
    CLI imports NumPy after it), and keeps a value the user set."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = (
        "import sys, os, kerascheck.cli; "
        "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], 'numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == [expected, "True"], done.stderr


def mobilenet_block(k):
    """expand 1x1 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> swish -> project 1x1 -> BN."""
    layers = [
        k.layers.Conv2D(48, 1, use_bias=False),
        k.layers.BatchNormalization(),
        k.layers.ReLU(6.0),
        k.layers.ZeroPadding2D(1),
        k.layers.DepthwiseConv2D(3, strides=2, use_bias=False),
        k.layers.BatchNormalization(),
        k.layers.Activation("swish"),
        k.layers.Conv2D(16, 1, use_bias=False),
        k.layers.BatchNormalization(),
    ]

    def apply(t):
        for layer in layers:
            t = layer(t)
        return t

    return apply


@pytest.mark.parametrize("flavor", FLAVORS)
def test_split_block_gradients_match_keras(tmp_path, two_threads, flavor):
    """Per tensor, relatively (Keras 3 names the depthwise kernel `kernel`)."""
    model = build_model(flavor, mobilenet_block, LARGE[1:])
    ours = kerascheck.load(save(model, str(tmp_path), flavor))
    x = make_input(LARGE)
    dy = make_input((4, 32, 32, 16), seed=2)
    theirs = keras_grads(model, x, dy, training=True)
    mine = engine_grads(ours, x, dy, training=True)
    assert relative_error(mine[0][0], theirs[0][0]) <= GRAD_RTOL
    compared = 0
    for layer, grads in theirs[1].items():
        for name, value in grads.items():
            if layer.startswith("depthwise"):
                name = "depthwise_kernel"
            error = relative_error(mine[1][layer][name], value)
            assert error <= GRAD_RTOL, f"{layer}/{name}: relative error {error:.2e}"
            compared += 1
    assert compared == 9  # three kernels, three gammas and three betas


def test_split_and_single_thread_agree(tmp_path, monkeypatch, two_threads):
    model = build_model("keras", mobilenet_block, LARGE[1:])
    ours = kerascheck.load(save(model, str(tmp_path), "keras"))
    x = make_input(LARGE)
    dy = make_input((4, 32, 32, 16), seed=2)
    split = engine_grads(ours, x, dy, training=True)
    monkeypatch.setenv("KERASCHECK_THREADS", "1")
    single = engine_grads(ours, x, dy, training=True)
    # The same sums in another order: float32 rounding apart, per tensor.
    assert relative_error(split[2][0], single[2][0]) <= 1e-5
    assert relative_error(split[0][0], single[0][0]) <= 1e-5
    for layer, grads in single[1].items():
        for name, value in grads.items():
            assert relative_error(split[1][layer][name], value) <= 1e-5, f"{layer}/{name}"


@pytest.mark.parametrize("pool, strides", [(2, 2), (3, 2)])  # tiles, and overlapping windows
def test_split_few_channel_max_pooling_matches_keras(tmp_path, two_threads, pool, strides):
    def make(k):
        return k.layers.MaxPooling2D(pool, strides=strides, padding="same")

    x = make_input(LARGE)
    check_layer_grad(tmp_path, make, LARGE[1:], x=x, finite_differences=False)


def test_split_binary_merge_matches_numpy(two_threads):
    a, b = make_input(LARGE), make_input((4, 1, 1, 24), seed=1)  # squeeze-excite style
    np.testing.assert_array_equal(threads.split_ufunc(np.multiply)(a, b), a * b)
    np.testing.assert_array_equal(threads.split_ufunc(np.add)(a, a), a + a)
