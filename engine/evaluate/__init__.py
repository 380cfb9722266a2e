"""How close a generated or predicted image is to reality: pixel, set and learned metrics."""
