"""Install the plugin zip into a fresh QGIS the way QGIS loads plugins, use it, unload it.

    python install_plugin.py PLUGIN_ZIP ENGINE_URL WORK_DIR  -> one JSON line on stdout

Run in its own process so that nothing from the source tree is importable: what runs is what
the zip holds. QGIS's own `qgis.utils.loadPlugin` / `startPlugin` / `unloadPlugin` do the work,
with a minimal stand-in for the QGIS main window interface (`iface`).
"""

import json
import os
import shutil
import sys
import zipfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.append("/usr/share/qgis/python/plugins")


class Interface:
    """What GFM4D's plugin shell uses of QgisInterface."""

    def __init__(self):
        from qgis.gui import QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.bar = QgsMessageBar(self.window)
        self.menus = {}

    def mainWindow(self):  # noqa: N802
        return self.window

    def messageBar(self):  # noqa: N802
        return self.bar

    def addPluginToRasterMenu(self, menu, action):  # noqa: N802
        self.menus.setdefault(f"Raster/{menu}", []).append(action.text())

    def removePluginRasterMenu(self, menu, action):  # noqa: N802
        self.menus[f"Raster/{menu}"].remove(action.text())


def main(zip_path: str, engine_url: str, work_dir: str) -> dict:
    plugins_dir = os.path.join(work_dir, "plugins")
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins_dir)
    from qgis.core import QgsApplication, QgsSettings
    from qgis.PyQt.QtCore import QSettings

    profile = os.path.join(work_dir, "profile")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)  # this QGIS's settings live in its own profile
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, profile)
    app = QgsApplication([], True, profile)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    QgsSettings().setValue("gfm4d/url", engine_url)
    QgsSettings().setValue("gfm4d/poll_interval_s", 0.1)

    import qgis.utils

    sys.path.insert(0, plugins_dir)
    qgis.utils.plugin_paths.insert(0, plugins_dir)
    qgis.utils.updateAvailablePlugins()  # reads every plugin's metadata.txt, as QGIS does at start
    qgis.utils.iface = iface = Interface()
    report = {"available": "gfm4d" in qgis.utils.available_plugins,
              "metadata_name": qgis.utils.pluginMetadata("gfm4d", "name"),
              "loaded": qgis.utils.loadPlugin("gfm4d"), "started": qgis.utils.startPlugin("gfm4d")}
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("gfm4d")
    report["algorithms"] = sorted(a.id() for a in provider.algorithms()) if provider else []
    report["module"] = sys.modules["gfm4d.processing_algorithms.provider"].__file__
    report["menu"] = list(iface.menus.get("Raster/&GFM4D", []))
    report["settings_file"] = QgsSettings().fileName()

    import processing

    status = processing.run("gfm4d:enginestatus", {})
    report["status_tasks"] = status["TASKS"]
    out = os.path.join(work_dir, "generated.tif")
    processing.run("gfm4d:generate", {"EXTENT": "500000,500064,4100000,4100064 [EPSG:32618]", "RESOLUTION": 1,
                                      "STEPS": 1, "PROMPT": "a fmow satellite image", "OUTPUT": out})
    report["generated"] = os.path.isfile(out)
    report["engine_libraries_imported"] = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "diffusers", "engine"})
    qgis.utils.plugins["gfm4d"].show_status()
    report["messages"] = [item.text() for item in iface.messageBar().items()]
    report["unloaded"] = qgis.utils.unloadPlugin("gfm4d")
    report["provider_after_unload"] = registry.providerById("gfm4d") is not None
    report["menu_after_unload"] = iface.menus.get("Raster/&GFM4D", [])
    report["modules_after_unload"] = sorted(name for name in sys.modules if name.split(".")[0] == "gfm4d")
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
    sys.stdout.flush()
    from qgis.core import QgsProcessingUtils

    shutil.rmtree(QgsProcessingUtils.tempFolder(), ignore_errors=True)
    os._exit(0)  # skip QGIS's teardown: the report is all this process was for
