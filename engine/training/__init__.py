"""Training GFM4D's own models: chips cut from georeferenced rasters, a VAE, a SatUNet, LoRAs.

`sources` says what imagery to learn from, `chips` cuts it into a chip bank with the same
conditioning inference computes, `vae` and `diffusion` are the two training loops (`inpainting`
gives the latter an inpainting UNet's inputs), `state` makes them resumable, `export` writes a model
folder the registry loads and `event_check` scores an inpainting model on held-out events.
"""
