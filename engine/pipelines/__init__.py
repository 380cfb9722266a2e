"""One module per task over a shared sampling loop."""
