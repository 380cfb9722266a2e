"""GFM4D algorithms in a graphical model (chained with each other and with a native algorithm) and
in a batch run the way the batch dialog runs them."""

import re

import numpy as np
import pytest

pytest.importorskip("qgis.core")

from helpers import needs_task, raster_grid, read_bands  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterLayer,
)

import processing  # noqa: E402
from processing_algorithms.compat import SOURCE_VECTOR_POLYGON  # noqa: E402


def static(value):
    return [QgsProcessingModelChildParameterSource.fromStaticValue(value)]


def child(model, algorithm_id, child_id, sources, outputs=()):
    """Add a step the way the modeler's dialog does: every parameter not given keeps its default."""
    from qgis.core import QgsApplication

    step = QgsProcessingModelChildAlgorithm(algorithm_id)
    step.setChildId(child_id)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    for definition in algorithm.parameterDefinitions():
        if not definition.isDestination() and definition.name() not in sources and definition.defaultValue() is not None:
            step.addParameterSources(definition.name(), static(definition.defaultValue()))
    for name, source in sources.items():
        step.addParameterSources(name, source)
    model_outputs = {}
    for model_name, child_output in outputs:
        output = QgsProcessingModelOutput(model_name, model_name)
        output.setChildOutputName(child_output)
        output.setChildId(child_id)
        model_outputs[model_name] = output
    step.setModelOutputs(model_outputs)
    model.addChildAlgorithm(step)


def inpaint_stats_generate_model() -> QgsProcessingModelAlgorithm:
    """inpaint -> (statistics of its label, generate over its label's extent)."""
    model = QgsProcessingModelAlgorithm("GFM4D chain", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("pre", "Pre-event raster"), QgsProcessingModelParameter("pre"))
    model.addModelParameter(QgsProcessingParameterFeatureSource("polygons", "Polygons", [SOURCE_VECTOR_POLYGON]),
                            QgsProcessingModelParameter("polygons"))
    model.addModelParameter(QgsProcessingParameterExtent("window", "Window"), QgsProcessingModelParameter("window"))
    child(model, "gfm4d:inpaint", "inpaint", {
        "INPUT": [QgsProcessingModelChildParameterSource.fromModelParameter("pre")],
        "POLYGONS": [QgsProcessingModelChildParameterSource.fromModelParameter("polygons")],
        "EXTENT": [QgsProcessingModelChildParameterSource.fromModelParameter("window")],
        "CLASS_FIELD": static("dmg"), "STEPS": static(1), "MODEL": static("demo-satunet"),
    }, outputs=[("post", "OUTPUT"), ("label", "OUTPUT_LABEL")])
    label = [QgsProcessingModelChildParameterSource.fromChildOutput("inpaint", "OUTPUT_LABEL")]
    child(model, "native:rasterlayerstatistics", "stats", {"INPUT": label, "BAND": static(1)},
          outputs=[("statistics", "OUTPUT_HTML_FILE")])
    child(model, "gfm4d:generate", "generate", {
        "EXTENT": label, "RESOLUTION": static(1.2), "PROMPT": static("a fmow satellite image of a town"),
        "STEPS": static(1), "MODEL": static("demo-sd"),
    }, outputs=[("generated", "OUTPUT")])
    return model


def test_model_chaining_inpaint_statistics_and_generate(provider, engine, project, rasters_dir, vectors_dir, tmp_path):
    needs_task(engine, "inpaint")
    saved = tmp_path / "chain.model3"
    assert inpaint_stats_generate_model().toFile(str(saved))
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(saved))  # what the modeler saves and opens again
    ok, issues = model.validate()
    assert ok, issues

    from qgis.core import QgsRasterLayer

    pre = QgsRasterLayer(str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"), "pre")
    centre = pre.extent().center()
    window = f"{centre.x() - 36},{centre.x() + 36},{centre.y() - 36},{centre.y() + 36} [EPSG:26915]"
    outputs = {name: str(tmp_path / f"{name}.{ext}") for name, ext in
               (("post", "tif"), ("label", "tif"), ("statistics", "html"), ("generated", "tif"))}
    results = processing.run(model, {
        "pre": pre, "polygons": str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "window": window,
        **{f"{step}:{name}": path for name, path in outputs.items()
           for step in [{"post": "inpaint", "label": "inpaint", "statistics": "stats", "generated": "generate"}[name]]},
    })
    label_grid, generated_grid = raster_grid(results["inpaint:label"]), raster_grid(results["generate:generated"])
    # generate took the label's extent and CRS, at its own resolution
    assert generated_grid.epsg == label_grid.epsg == "EPSG:26915"
    assert generated_grid.origin == pytest.approx(label_grid.origin, abs=1e-6)
    assert generated_grid.pixel == (1.2, 1.2)
    assert generated_grid.width == round(label_grid.width * 0.6 / 1.2)
    # the native statistics read the label GFM4D wrote
    html = open(results["stats:statistics"], encoding="utf-8").read()
    mean = float(re.search(r"Mean value: ([0-9.eE+-]+)", html).group(1))
    assert mean == pytest.approx(read_bands(results["inpaint:label"]).astype(float).mean(), rel=1e-6)
    assert mean > 0


def test_batch_rows_run_one_after_another_and_a_bad_row_fails_alone(provider, engine, tmp_path):
    from qgis.core import QgsApplication

    from processing.gui.BatchAlgorithmDialog import BatchFeedback
    from processing.tools import dataobjects

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("gfm4d:generate")
    rows = [  # as the batch table hands them over: text values
        {"EXTENT": "500000,500128,4100000,4100128 [EPSG:32618]", "RESOLUTION": "2", "SEED": "1", "MODEL": "demo-satunet"},
        {"EXTENT": "500000,500128,4100000,4100064 [EPSG:32618]", "RESOLUTION": "1", "SEED": "2", "MODEL": "demo-sd",
         "DATE": "2020-06-01", "CLOUD_COVER": "0.1"},
        {"RESOLUTION": "2", "SEED": "3"},  # says nowhere where to generate
        {"EXTENT": "-75.0,-74.999,40.0,40.001 [EPSG:4326]", "OUTPUT_CRS": "EPSG:32618", "RESOLUTION": "4", "SEED": "4"},
    ]
    feedback = QgsProcessingFeedback()
    batch = BatchFeedback(len(rows), feedback)
    outcomes = []
    for index, row in enumerate(rows):
        batch.setCurrentStep(index)
        parameters = algorithm.preprocessParameters({
            **row, "STEPS": "1", "PROMPT": "a fmow satellite image", "OUTPUT": str(tmp_path / f"row{index}.tif")})
        context = dataobjects.createContext(batch)
        results, ok = algorithm.run(parameters, context, batch)
        outcomes.append(ok)
    assert outcomes == [True, True, False, True]
    assert not (tmp_path / "row2.tif").exists()
    first, second, fourth = (raster_grid(tmp_path / f"row{i}.tif") for i in (0, 1, 3))
    assert (first.width, first.height, first.pixel) == (64, 64, (2.0, 2.0))
    assert (second.width, second.height, second.pixel) == (128, 64, (1.0, 1.0))
    assert fourth.epsg == "EPSG:32618" and fourth.pixel == (4.0, 4.0)
    jobs = {job["params"]["seed"]: job for job in engine.jobs() if job["task"] == "generate"}
    assert jobs[2]["params"]["date"] == "2020-06-01" and jobs[2]["params"]["cloud_cover"] == 0.1
    assert jobs[2]["params"]["model"] == "demo-sd"
    assert not np.array_equal(read_bands(tmp_path / "row0.tif")[:, :64, :64], read_bands(tmp_path / "row1.tif")[:, :64, :64])
