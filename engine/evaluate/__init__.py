"""How close a generated or predicted image is to reality, measured the way the papers do.

The API other code calls (no GIS, server or QGIS imports in these modules):
- `engine.evaluate.pixels.compare(result, reference, mask=None, data_range=None)`: MSE, PSNR, SSIM
  per band and overall of two (bands, rows, cols) arrays (scikit-image's formulas);
  `per_window(...)` the same per tile.
- `engine.evaluate.sets.frechet_distance(fa, fb)`, `kernel_inception_distance(fa, fb)`,
  `inception_score(probabilities)`, `bootstrap(statistic, *sets)`: set metrics on (N, D) features.
- `engine.evaluate.networks.FeatureNetwork`, `engine.evaluate.learned.LPIPS` / `CLIPScore`: the
  networks behind the learned metrics, from local files only.

For rasters on disk: `engine.evaluate.run.evaluate_pair` (co-registration, masks, report, plot,
error map) and `evaluate_sets` (two folders or manifests), which the CLI, the `evaluate` task and
the QGIS algorithm use.
"""
