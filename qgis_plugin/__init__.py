"""QGIS plugin shell for GFM4D: Processing provider, settings, local engine menu.

In the installed plugin the algorithms are the subpackage `processing_algorithms` of this
package; in the source tree they are the top-level package of the same name. `algorithms_module`
finds them either way, so the same files run in both places.
"""

import importlib.util


def algorithms_module(name: str):
    """A module of the processing_algorithms package (e.g. "provider").

    Imported with __import__, which QGIS wraps to note each plugin's modules, so that unloading
    (or reloading) the plugin drops them too.
    """
    nested = f"{__name__}.processing_algorithms"
    package = nested if importlib.util.find_spec(nested) is not None else "processing_algorithms"
    return getattr(__import__(package, fromlist=[name]), name)


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import GFM4DPlugin

    return GFM4DPlugin(iface)
