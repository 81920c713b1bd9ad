"""Where a saved file keeps its training setup (loss, optimizer), read as plain JSON."""

from __future__ import annotations


def training_setup(compiled, where: str) -> dict | None:
    """The loss and optimizer a file was compiled with, as the JSON it stores them.

    Every entry is checked to be plain JSON or built-in Keras objects first, since
    Keras (the oracle) deserializes all of it when it loads the file."""
    from .safety import check_builtin

    check_builtin(compiled, where, "built-in Keras loss, metric or optimizer")
    if not isinstance(compiled, dict) or compiled.get("loss") is None:
        return None
    optimizer = compiled.get("optimizer", compiled.get("optimizer_config"))
    return {
        "loss": compiled["loss"],
        "loss_weights": compiled.get("loss_weights"),
        "optimizer": optimizer,
        "where": where,
    }


def keras3_optimizer_vars(store, path: str) -> list | None:
    """`optimizer/vars/N` of a `.keras` weights file, in index order: 0 is the iteration
    count, 1 the learning rate, then the slots in trainable-variable order."""
    from .hdf5 import child, read_array

    group = child(store, "optimizer/vars")
    if group is None:
        return None
    keys = sorted((k for k in group.keys() if k.isdigit()), key=int)
    return [read_array(child(group, k), f"{path}: optimizer/vars/{k}") for k in keys]


def h5_optimizer_weights(handle, path: str) -> list | None:
    """`optimizer_weights` of a legacy `.h5` file: (name, array) in its `weight_names` order."""
    from .hdf5 import child, list_attr, read_array

    group = child(handle, "optimizer_weights")
    if group is None:
        return None
    names = list_attr(group, "weight_names")
    arrays = []
    for name in names:
        node = child(group, name)
        if node is None:
            continue
        arrays.append((name, read_array(node, f"{path}: optimizer_weights/{name}")))
    return arrays
