import pytest


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("activation", ["relu", "linear", "tanh", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_any_rank(check_layer, shape, activation, use_bias):
    check_layer(lambda k: k.layers.Dense(4, activation=activation, use_bias=use_bias), shape)
