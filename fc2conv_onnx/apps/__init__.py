"""Applications on converted models (heatmaps, detection): they use the converter only through the model
layer and the metadata it writes."""
