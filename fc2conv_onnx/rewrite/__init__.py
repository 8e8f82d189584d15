"""The plan made nodes: heads as convolutions, finer strides (a trous), symbolic shapes and the converted
marker, and the in-graph detector."""
