"""Training GFM4D's own models: chips cut from georeferenced rasters, a VAE, a SatUNet, LoRAs.

`sources` says what imagery to learn from, `chips` cuts it into a chip bank with the same
conditioning inference computes, `vae` and `diffusion` are the two training loops, `state` makes
them resumable and `export` writes a model folder the registry loads.
"""
