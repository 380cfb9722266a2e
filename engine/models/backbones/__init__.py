"""Modern diffusers backbones (SDXL, SD3/3.5, FLUX.1) on GFM4D's one sampling loop.

- `base`: the adapter interface (`UNetBackbone`, also SD 1.x/2.x and DiffusionSat) and flow-matching noising;
- `sdxl`, `sd3`, `flux`: the per-family adapters (text encoders, denoiser call, packing, timesteps);
- `recognise`: which folder is which family, from the denoiser's config;
- `loading`: building every component from a local diffusers folder.
"""
