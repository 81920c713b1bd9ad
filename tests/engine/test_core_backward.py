import pytest
from gradcheck import check_layer_grad


@pytest.mark.parametrize(
    "act",
    [
        "relu",
        "sigmoid",
        "tanh",
        "softmax",
        "gelu",
        "selu",
        "hard_sigmoid",
        "swish",
        "elu",
        "softplus",
        "linear",
    ],
)
def test_dense(tmp_path, act):
    check_layer_grad(tmp_path, lambda k: k.layers.Dense(4, activation=act), (5,))


def test_flatten_dense(tmp_path):
    def make(k):
        def f(x):
            return k.layers.Dense(3)(k.layers.Flatten()(x))

        return f

    check_layer_grad(tmp_path, make, (3, 4, 2))
