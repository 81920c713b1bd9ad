"""Where a saved file keeps its training setup (loss, optimizer), read as plain JSON."""

from __future__ import annotations


def training_setup(compiled, where: str) -> dict | None:
    """The loss and optimizer a file was compiled with, as the JSON it stores them."""
    if not isinstance(compiled, dict) or compiled.get("loss") is None:
        return None
    optimizer = compiled.get("optimizer", compiled.get("optimizer_config"))
    return {
        "loss": compiled["loss"],
        "loss_weights": compiled.get("loss_weights"),
        "optimizer": optimizer,
        "where": where,
    }
