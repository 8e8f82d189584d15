"""Making a graph readable: constants folded, shape computations evaluated, the trunk's sizes followed,
layouts traced through the trunk."""
