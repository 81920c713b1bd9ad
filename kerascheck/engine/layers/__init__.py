"""Engine layers, one module per Keras layer family."""
