"""Run inside QGIS (qgis --code) by scripts/qgis_screenshots.py: stage the scenes of the docs' screenshots.

Loads the demo's flood sample: the dry 2009 NAIP image of North Dakota farmland (5 m) and the water
NAIP shows there on 2019-09-04 as polygons (ground GFM4D's models never trained on), searches the
Processing toolbox for "flood", opens the Inpaint dialog filled in as an analyst would, runs it with
GFM4D-mini-inpaint, and saves three PNGs into $GFM4D_SHOTS_DIR; then quits QGIS.
"""

import os
import time
import traceback
from pathlib import Path

import processing
import qgis.utils
from qgis.core import QgsFillSymbol, QgsProject, QgsRasterLayer, QgsSettings, QgsVectorLayer
from qgis.PyQt.QtCore import QCoreApplication, QTimer

SHOTS = Path(os.environ["GFM4D_SHOTS_DIR"])
SAMPLES = Path(os.environ["GFM4D_REPO"]) / "engine" / "sample_data"
BEFORE = SAMPLES / "naip_m_4709963_se_14_1_20090818_heldout.tif"
FLOOD = SAMPLES / "naip_flood_20190904_heldout.geojson"


def settle(seconds: float) -> None:
    """Let QGIS draw for a while (the script runs on its main thread)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.05)


def render(canvas) -> None:
    canvas.refreshAllLayers()
    settle(1.0)
    canvas.waitWhileRendering()
    settle(1.0)


def flood_layer():
    """The 2019 flood polygons (CEMS notation 'Flooded area'), outlined."""
    layer = QgsVectorLayer(str(FLOOD), "flood polygons (2019-09-04)", "ogr")
    layer.renderer().setSymbol(QgsFillSymbol.createSimple(
        {"color": "0,0,0,0", "outline_color": "#e31a1c", "outline_width": "0.6"}))
    return layer


def stage() -> None:
    iface = qgis.utils.iface
    QgsSettings().setValue("/projections/promptWhenMultipleTransformsExist", False, QgsSettings.App)
    window = iface.mainWindow()
    window.setGeometry(0, 0, 1400, 850)
    pre = QgsRasterLayer(str(BEFORE), "pre-event (NAIP farmland, 5 m, 2009-08-18)")
    flood = flood_layer()
    QgsProject.instance().addMapLayers([pre, flood])
    canvas = iface.mapCanvas()
    canvas.setExtent(pre.extent())
    render(canvas)

    toolbox = qgis.utils.plugins["processing"].toolbox
    toolbox.setVisible(True)
    toolbox.searchBox.setText("flood")
    toolbox.algorithmTree.expandAll()
    render(canvas)
    window.grab().save(str(SHOTS / "qgis_toolbox.png"))

    extent = pre.extent()
    parameters = {"INPUT": pre, "POLYGONS": flood, "CLASS_FIELD": "notation", "DISASTER_TYPE": "flooding",
                  "DATE": "2019-09-04",
                  "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} [EPSG:26914]",
                  "MODEL": "gfm4d-mini-inpaint", "STEPS": 30, "SEED": 4}
    dialog = processing.createAlgorithmDialog("gfm4d:inpaint", parameters)
    dialog.resize(900, 760)
    dialog.show()
    settle(3.0)
    dialog.grab().save(str(SHOTS / "qgis_inpaint_dialog.png"))
    dialog.close()

    results = processing.runAndLoadResults("gfm4d:inpaint", {**parameters, "OUTPUT": "TEMPORARY_OUTPUT",
                                                             "OUTPUT_LABEL": "TEMPORARY_OUTPUT"})
    loaded = {layer.source(): layer.id() for layer in QgsProject.instance().mapLayers().values()}
    root = QgsProject.instance().layerTreeRoot()
    polygons = root.findLayer(flood.id())
    root.insertChildNode(0, polygons.clone())  # the outlines over the results
    polygons.parent().removeChildNode(polygons)
    for node in root.findLayers():
        node.setExpanded(node.layerId() == loaded[results["OUTPUT_LABEL"]])  # the label's legend: its classes
    iface.setActiveLayer(QgsProject.instance().mapLayer(loaded[results["OUTPUT"]]))
    canvas.setExtent(extent)
    render(canvas)
    window.grab().save(str(SHOTS / "qgis_inpaint_result.png"))


def finish() -> None:
    try:
        stage()
    except Exception:  # noqa: BLE001 (the driver reports the missing pictures; the reason goes to its log)
        traceback.print_exc()
    QgsProject.instance().setDirty(False)
    os._exit(0)  # the pictures are saved; QGIS's own teardown adds nothing (and may crash under Xvfb)


QTimer.singleShot(3000, finish)
