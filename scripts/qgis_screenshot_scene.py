"""Run inside QGIS (qgis --code) by scripts/qgis_screenshots.py: stage the scenes of the docs' screenshots.

Loads the xView2 Joplin pre-event tile and its damage polygons, searches the Processing toolbox for
"damage", opens the Inpaint dialog filled in as an analyst would, runs it with GFM4D-mini, and
saves three PNGs into $GFM4D_SHOTS_DIR; then quits QGIS.
"""

import os
import time
import traceback
from pathlib import Path

import processing
import qgis.utils
from qgis.core import QgsFillSymbol, QgsProject, QgsRasterLayer, QgsRectangle, QgsSettings, QgsVectorLayer
from qgis.PyQt.QtCore import QCoreApplication, QTimer

SHOTS = Path(os.environ["GFM4D_SHOTS_DIR"])
DATA = Path(os.environ["GFM4D_REPO"]) / "tests" / "data"
HALF = 90.0  # metres around the tile's centre: the inpainted window


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


def stage() -> None:
    iface = qgis.utils.iface
    # the polygons' WGS 84 UTM and the raster's NAD83 UTM have several transformations: take the best without asking
    QgsSettings().setValue("/projections/promptWhenMultipleTransformsExist", False, QgsSettings.App)
    window = iface.mainWindow()
    window.setGeometry(0, 0, 1400, 850)
    pre = QgsRasterLayer(str(DATA / "rasters" / "xv2deploy_pre_tile_1361-10160.tif"), "pre-event (xView2 Joplin tile)")
    damage = QgsVectorLayer(str(DATA / "vectors" / "xview2_deploy_joplin" / "damage.shp"), "damage polygons", "ogr")
    damage.renderer().setSymbol(QgsFillSymbol.createSimple(
        {"color": "0,0,0,0", "outline_color": "#e31a1c", "outline_width": "0.5"}))
    QgsProject.instance().addMapLayers([pre, damage])
    canvas = iface.mapCanvas()
    canvas.setExtent(pre.extent())
    render(canvas)

    toolbox = qgis.utils.plugins["processing"].toolbox
    toolbox.setVisible(True)
    toolbox.searchBox.setText("damage")
    toolbox.algorithmTree.expandAll()
    render(canvas)
    window.grab().save(str(SHOTS / "qgis_toolbox.png"))

    centre = pre.extent().center()
    extent = QgsRectangle(centre.x() - HALF, centre.y() - HALF, centre.x() + HALF, centre.y() + HALF)
    parameters = {"INPUT": pre, "POLYGONS": damage, "DISASTER_TYPE": "wind", "DATE": "2011-05-23",
                  "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} [EPSG:26915]",
                  "MODEL": "gfm4d-mini", "STEPS": 20, "SEED": 1}
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
    polygons = root.findLayer(damage.id())
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
