"""`kerascheck summary`: windows, weight shapes, parameter arithmetic, `--explain`'s shape
walk, and a start-up that reads the weights' shapes only (no values, no TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py
import pytest
from click.testing import CliRunner
from helpers import keras_module, randomize_weights
from rich.console import Console

import kerascheck
from kerascheck.cli import main
from kerascheck.loading import keras_zip
from kerascheck.report.summary import param_formula, summary_table, window
from kerascheck.shape_walk import walk

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
SEED004 = os.path.join(SAMPLES, "seed004_cnn.keras")


def _zoo(k):
    """One functional model with every layer family the shape walk explains."""
    L = k.layers
    image = k.Input((28, 28, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", name="strided")(image)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(8, 3, dilation_rate=2, name="dilated")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="depthwise")(x)
    x = L.SeparableConv2D(6, 3, strides=2, name="separable")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, name="transposed")(x)
    x = L.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same", name="avgpool")(x)
    rows, columns = x.shape[1], x.shape[2]
    y = L.MaxPooling2D(2, strides=1, padding="same", name="maxpool")(x)
    y = L.UpSampling2D(2, name="up")(y)
    y = L.Cropping2D(((0, rows), (columns, 0)), name="crop")(y)
    merged = L.Add(name="add")([x, y])
    cat = L.Concatenate(name="cat")([merged, x])
    first = L.Permute((3, 1, 2), name="permute")(cat)
    first = L.Conv2D(5, 2, data_format="channels_first", name="conv_cf")(first)
    flat = L.Flatten(data_format="channels_first", name="flat")(first)
    gap = L.GlobalAveragePooling2D(name="gap")(cat)
    dense = L.Dense(12, activation="relu", name="dense")(L.Concatenate(name="cat2")([flat, gap]))
    seq = L.Reshape((3, 4), name="reshape")(dense)
    seq = L.Conv1D(6, 2, padding="causal", name="conv1d")(seq)
    seq = L.LSTM(5, return_sequences=True, name="lstm")(seq)
    last = L.GRU(4, name="gru")(seq)
    tokens = k.Input((7,), dtype="int32", name="tokens")
    embedded = L.Embedding(50, 6, name="embedding")(tokens)
    both = L.Bidirectional(L.SimpleRNN(3), name="bidi")(embedded)
    volume = k.Input((6, 6, 6, 2), name="volume")
    v = L.Conv3D(3, 2, name="conv3d")(volume)
    v = L.MaxPooling3D(2, name="pool3d")(v)
    v = L.GlobalMaxPooling3D(name="gmp3d")(v)
    out = L.Concatenate(name="out")([last, both, v])
    model = k.Model([image, tokens, volume], out)
    randomize_weights(model)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("summary")
    k = keras_module("keras")
    model = _zoo(k)
    paths = {ext: str(root / f"zoo{ext}") for ext in (".keras", ".h5")}
    for path in paths.values():
        model.save(path)
    return paths, model


COVERED_CLASSES = {
    "Conv2D", "BatchNormalization", "ReLU", "DepthwiseConv2D", "SeparableConv2D",
    "Conv2DTranspose", "ZeroPadding2D", "AveragePooling2D", "MaxPooling2D", "UpSampling2D",
    "Cropping2D", "Add", "Concatenate", "Permute", "Flatten", "GlobalAveragePooling2D",
    "Dense", "Reshape", "Conv1D", "LSTM", "GRU", "Embedding", "Bidirectional", "Conv3D",
    "MaxPooling3D", "GlobalMaxPooling3D", "InputLayer",
}  # fmt: skip


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_walk_shapes_are_the_engines(saved, ext):
    paths, keras_model = saved
    model = kerascheck.load(paths[ext], values=False)
    steps = walk(model)
    assert {s.class_name for s in steps} == COVERED_CLASSES
    for step in steps:
        assert step.derived, step.name
        if step.class_name != "InputLayer":
            assert step.shape == model.output_shapes[step.name], (step.name, step.sentences)
    assert model.output_shapes["out"] == tuple(keras_model.output.shape)


def test_shapes_only_load_matches_a_full_load(saved):
    paths, keras_model = saved
    full = kerascheck.load(paths[".keras"])
    shapes = kerascheck.load(paths[".keras"], values=False)
    assert shapes.output_shapes == full.output_shapes
    assert shapes.param_count() == full.param_count() == keras_model.count_params()
    with pytest.raises(kerascheck.KerascheckError, match="shapes only"):
        shapes.predict(None)


def test_seed004_rows_and_sentences():
    model = kerascheck.load(SEED004, values=False)
    layers = model.graph.layers
    assert window(layers["conv2d_1"]) == "4x4 s1 valid d1"
    assert window(layers["max_pooling2d"]) == "2x2 s2 valid"
    assert param_formula(layers["conv2d_1"]) == "4·4·10·20 + 20 = 3,220"
    assert param_formula(layers["dense"]) == "320·128 + 128 = 41,088"
    text = {s.name: " ".join(s.sentences) for s in walk(model)}
    assert "(28 − 4)/1 + 1 = 25 → (25, 25, 10)" in text["conv2d"]
    assert "each of the 20 filters is 4x4x10" in text["conv2d_1"]
    assert "25 // 2 = 12" in text["max_pooling2d"]
    assert "4·4·20 = 320 values, in channels-last order (row, column, channel)" in text["flatten"]
    assert "320 inputs, so the kernel is 320x128" in text["dense"]


def test_walk_arithmetic_of_same_dilated_and_channels_first(saved):
    model = kerascheck.load(saved[0][".keras"], values=False)
    text = {s.name: " ".join(s.sentences) for s in walk(model)}
    assert "ceil(28/2) = 14" in text["strided"]
    assert "the kernel spans 5x5" in text["dilated"] and "(14 − 5)/1 + 1 = 10" in text["dilated"]
    assert "8·2 = 16 output channels" in text["depthwise"]
    assert "Keras moves the channels last first" in text["flat"]
    assert "return_sequences=True" in text["lstm"] and "return_sequences=False" in text["gru"]
    assert "not counted" in text["avgpool"]


def test_batch_norm_formula_counts_trainable(saved):
    model = kerascheck.load(saved[0][".keras"], values=False)
    assert param_formula(model.graph.layers["bn"]) == "4·8 = 32 (16 trainable)"


def test_cli_summary_wide_and_explain():
    result = CliRunner().invoke(main, ["summary", SEED004, "--explain"])
    assert result.exit_code == 0, result.output
    assert "4·4·10·20 + 20 = 3,220" in result.stdout
    assert "kernel 4x4x10x20, bias 20" in result.stdout
    assert "How each shape comes about" in result.stdout
    assert "(12 − 4)/1 + 1 = 9" in result.stdout


def test_narrow_table_fits_80_columns(saved):
    console = Console(width=80, record=True, highlight=False)
    model = kerascheck.load(saved[0][".keras"], values=False)
    console.print(summary_table(model, width=80))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "3x3 s2 same d1" in text and "4·8 = 32 (16 trainable)" in text


def test_bad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["summary", str(bad)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_summary_reads_no_weight_values(saved, ext, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset's values were read")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", refuse)
    monkeypatch.setattr(h5py.Dataset, "read_direct", refuse)
    windows = []
    real = keras_zip.MemberWindow.__init__

    def track(self, *args):
        real(self, *args)
        windows.append(self)

    monkeypatch.setattr(keras_zip.MemberWindow, "__init__", track)
    result = CliRunner().invoke(main, ["summary", saved[0][ext]])
    assert result.exit_code == 0, result.output
    assert "Total params" in result.stdout
    # .keras: the weights file is opened through a window, never read whole
    assert len(windows) == (1 if ext == ".keras" else 0)


def test_big_keras_file_reads_a_sliver(tmp_path):
    k = keras_module("keras")
    inp = k.Input((1000,))
    model = k.Model(inp, k.layers.Dense(1000, name="big")(inp))
    path = str(tmp_path / "big.keras")
    model.save(path)
    with keras_zip.zipfile.ZipFile(path) as archive:
        member_size = archive.getinfo("model.weights.h5").file_size
    windows = []
    real = keras_zip.MemberWindow.__init__
    keras_zip.MemberWindow.__init__ = lambda self, *a: (real(self, *a), windows.append(self))[0]
    try:
        model = kerascheck.load(path, values=False)
    finally:
        keras_zip.MemberWindow.__init__ = real
    assert model.param_count() == 1000 * 1000 + 1000
    assert windows[0].bytes_read < member_size / 20  # 4 MB of weights, kilobytes read


SCRIPT = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(name + " is blocked in this test")

    sys.meta_path.insert(0, Blocker())
    from kerascheck.cli import main
    try:
        main(["summary", sys.argv[1], "--explain"])
    except SystemExit as exit:
        loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        print("EXIT", exit.code, "LOADED", loaded)
    """
)


def test_summary_imports_no_tensorflow(saved):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, saved[0][".keras"]], capture_output=True, text=True
    )
    assert "EXIT 0 LOADED []" in done.stdout, done.stderr[-2000:]
    assert "How each shape comes about" in done.stdout
