"""gfm4d:train through processing.run on a real engine: raster layers (and class polygons) become a LoRA
installed in the engine's models folder, with its model card and loss curve; bad input is refused with
what to do, before anything is sent."""

import re

import pytest

pytest.importorskip("qgis.core")

from conftest import REPO  # noqa: E402
from helpers import needs_task, read_bands  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

import processing  # noqa: E402

OSBS = REPO.parent / "shared" / "data" / "train" / "OSBS_029.tif"  # 400 x 400 px RGB, 0.1 m, CC BY 4.0
BASE = "demo-satunet"  # the test engine's SatUNet: a LoRA on it trains in seconds on a CPU
TINY = {"CHIP_SIZE": 32, "SCALES": "1", "STEPS": 2, "BATCH_SIZE": 2}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BURNT_CAPTION = "a fmow satellite image after being affected by a fire natural disaster with burnt areas"


@pytest.fixture
def osbs(provider, engine):
    needs_task(engine, "train")
    if not OSBS.is_file():
        pytest.skip(f"training imagery not found at {OSBS}")
    if BASE not in engine.models_for("generate"):
        pytest.skip(f"the test engine has no {BASE}")
    layer = QgsRasterLayer(str(OSBS), "OSBS_029")
    assert layer.isValid()
    return layer


class Recorder(QgsProcessingFeedback):
    """The progress texts and values a run reports, as the Processing dialog would show them."""

    def __init__(self):
        super().__init__()
        self.texts, self.values = [], []
        self.progressChanged.connect(self.values.append)

    def setProgressText(self, text):  # noqa: N802
        self.texts.append(text)


def test_a_lora_trained_on_a_raster_layer_is_installed_with_its_card_and_loss_curve(osbs, engine, tmp_path):
    card, loss = tmp_path / "card.md", tmp_path / "loss.png"
    feedback = Recorder()
    result = processing.run("gfm4d:train", {
        "INPUTS": [str(OSBS)], "NAME": "qgis-forest-lora", "MODEL": BASE, **TINY, "LAND_COVER": "forest",
        "LICENCE": "CC BY 4.0", "CARD": str(card), "LOSS_CURVE": str(loss)}, feedback=feedback)

    assert result["MODEL_NAME"] == "qgis-forest-lora"
    assert result["CARD"] == str(card) and result["LOSS_CURVE"] == str(loss)
    text = card.read_text(encoding="utf-8")
    assert "OSBS_029.tif" in text and "CC BY 4.0" in text and f"mode `lora` on `{BASE}`" in text
    assert loss.read_bytes().startswith(PNG_SIGNATURE)
    assert (engine.models_dir / "loras" / "qgis-forest-lora.safetensors").is_file()
    params = engine.job(result["JOB_ID"])["params"]
    assert {key: params[key] for key in ("mode", "model", "chip_size", "scales", "steps", "batch")} == {
        "mode": "lora", "model": BASE, "chip_size": 32, "scales": [1], "steps": 2, "batch": 2}
    assert any(text.startswith("unet step 2") for text in feedback.texts)  # the engine's training progress
    assert feedback.values[-1] == 100

    # Generate uses the installed LoRA on its base model: the job carries it, and the image changes
    images = {}
    for lora in (None, "qgis-forest-lora:1.5"):
        out = tmp_path / f"generated_{bool(lora)}.tif"
        run = processing.run("gfm4d:generate", {
            "MODEL": BASE, "LORA": lora, "STEPS": 2, "SEED": 4, "PROMPT": "a fmow satellite image of a forest",
            "EXTENT": "500000,500064,4100000,4100064 [EPSG:32618]", "RESOLUTION": 1, "OUTPUT": str(out)})
        assert engine.job(run["JOB_ID"])["params"].get("lora") == ([{"name": "qgis-forest-lora", "scale": 1.5}] if lora else None)
        images[bool(lora)] = read_bands(out)
    assert (images[True] != images[False]).any()

    # LoRAs are not in the engine's model list, so only the engine can tell that the name is taken
    again = tmp_path / "again.md"
    with pytest.raises(QgsProcessingException, match="'qgis-forest-lora' exists already; choose another name"):
        processing.run("gfm4d:train", {"INPUTS": [str(OSBS)], "NAME": "qgis-forest-lora", "MODEL": BASE, **TINY,
                                       "CARD": str(again)})
    assert not again.exists()


def west_burn(osbs) -> QgsVectorLayer:
    """A burn perimeter over the raster's west half, in another CRS than the raster's."""
    extent, wgs84 = osbs.extent(), QgsCoordinateReferenceSystem("EPSG:4326")
    west = QgsRectangle(extent.xMinimum(), extent.yMinimum(), extent.center().x(), extent.yMaximum())
    geometry = QgsGeometry.fromRect(west)
    geometry.transform(QgsCoordinateTransform(osbs.crs(), wgs84, QgsProject.instance()))
    perimeter = QgsVectorLayer("Polygon?crs=EPSG:4326&field=name:string", "perimeter", "memory")
    feature = QgsFeature(perimeter.fields())
    feature.setAttributes(["west burn"])
    feature.setGeometry(geometry)
    assert perimeter.dataProvider().addFeatures([feature])
    return perimeter


def test_class_polygons_caption_the_chips_they_cover(osbs, engine, tmp_path):
    perimeter = west_burn(osbs)
    card = tmp_path / "card.md"
    result = processing.run("gfm4d:train", {
        "INPUTS": [str(OSBS)], "NAME": "qgis-burn-lora", "MODEL": BASE, **TINY, "POLYGONS": perimeter,
        "POLYGON_CLASS": "burnt-area", "DISASTER_TYPE": "fire", "EVENT_CHIPS": 0.5, "CARD": str(card), "LOSS_CURVE": None})

    assert f"'{BURNT_CAPTION}'" in card.read_text(encoding="utf-8")
    assert "LOSS_CURVE" not in result
    params = engine.job(result["JOB_ID"])["params"]
    assert (params["polygon_class"], params["disaster_type"], params.get("class_field")) == ("burnt-area", "fire", None)
    assert params["event_chips"] == 0.5
    assert [path.suffix for path in engine.uploads(result["JOB_ID"])] == [".gpkg", ".tif"]  # polygons/, rasters.0/


def test_an_inpainting_model_trained_on_burn_polygons_is_offered_by_inpaint(osbs, engine, tmp_path):
    from processing_algorithms.model_catalog import CATALOG

    card = tmp_path / "card.md"
    result = processing.run("gfm4d:train", {
        "INPUTS": [str(OSBS)], "NAME": "qgis-burn-inpainter", "MODE": "full", "MODEL": BASE, "INPAINTING": True, **TINY,
        "POLYGONS": west_burn(osbs), "POLYGON_CLASS": "burnt-area", "DISASTER_TYPE": "fire", "CARD": str(card)})

    assert engine.job(result["JOB_ID"])["params"]["inpainting"] is True
    assert "an inpainting UNet (9 input channels" in card.read_text(encoding="utf-8")
    # Inpaint lists it (the lists were refreshed when the job ended); Generate does not.
    assert "qgis-burn-inpainter" in CATALOG.names_for("inpaint")
    assert "qgis-burn-inpainter" not in CATALOG.names_for("generate")
    # Train offers it as a base model, and the engine takes it: a LoRA on it is an inpainting LoRA.
    assert "qgis-burn-inpainter" in CATALOG.names_for(("generate", "inpaint"))
    lora_card = tmp_path / "lora.md"
    processing.run("gfm4d:train", {
        "INPUTS": [str(OSBS)], "NAME": "qgis-burn-inpainter-lora", "MODEL": "qgis-burn-inpainter", **TINY,
        "CARD": str(lora_card)})
    assert "an inpainting UNet (9 input channels" in lora_card.read_text(encoding="utf-8")


@pytest.mark.parametrize("lora", ["forest-lora:strong", ":0.5", "forest-lora:99"])
def test_a_malformed_lora_is_explained_before_anything_is_sent(provider, engine, lora, tmp_path):
    jobs = len(engine.jobs())
    with pytest.raises(QgsProcessingException, match=re.escape(f"LoRAs: '{lora}' is not NAME or NAME:WEIGHT")):
        processing.run("gfm4d:generate", {"MODEL": BASE, "LORA": f"other-lora, {lora}", "STEPS": 1,
                                          "EXTENT": "500000,500064,4100000,4100064 [EPSG:32618]", "RESOLUTION": 1,
                                          "OUTPUT": str(tmp_path / "never.tif")})
    assert len(engine.jobs()) == jobs
    assert not (tmp_path / "never.tif").exists()


@pytest.fixture
def tiles(project):
    """A tile service layer: it has no pixels of its own (nothing is fetched from the address)."""
    layer = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=0&zmax=19", "tiles", "wms")
    assert layer.isValid()
    project.addMapLayer(layer)
    return layer


@pytest.mark.parametrize("change, message", [
    ({"NAME": BASE}, f"The engine already has a model named '{BASE}': choose another Model name"),
    ({"NAME": "my model!"}, "Model name 'my model!' cannot name a model folder"),
    ({"CLASS_FIELD": "dmg"}, "No Class polygons were given, so there is nothing for Class field to describe"),
    ({"POLYGON_CLASS": "burnt-area", "DISASTER_TYPE": "fire"},
     "nothing for Polygon class and Disaster type to describe: choose the polygons"),
    ({"MODE": "scratch"}, "Mode scratch trains a new model and uses no base model: leave Base model empty"),
    ({"CHIP_SIZE": 100}, "Chip size must be a multiple of 8"),
    ({"SCALES": "1, half"}, "Scales: write whole numbers separated by commas"),
    ({"INPUTS": "tiles"}, "The raster layer 'tiles' has no pixels of its own"),
])
def test_bad_input_is_explained_before_anything_is_sent(osbs, engine, tiles, tmp_path, change, message):
    parameters = {"INPUTS": [str(OSBS)], "NAME": "never-trained", "MODEL": BASE, **TINY, "CARD": str(tmp_path / "card.md")}
    parameters.update({key: [tiles.id()] if value == "tiles" else value for key, value in change.items()})
    jobs = len(engine.jobs())
    with pytest.raises(QgsProcessingException, match=re.escape(message)):
        processing.run("gfm4d:train", parameters)
    assert len(engine.jobs()) == jobs
    assert not (tmp_path / "card.md").exists()
