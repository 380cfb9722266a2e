"""What an analyst meets before running anything: the toolbox search, the Help button, readable
parameter labels, the plugin's metadata for the official repository, settings kept apart from the
user's, and a plugin that never pulls the engine's heavy libraries into QGIS."""

import ast
import configparser
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from conftest import REPO  # noqa: E402

from processing_algorithms.compat import FLAG_OPTIONAL  # noqa: E402

GFM4D_ALGORITHMS = ["gfm4d:enginestatus", "gfm4d:generate", "gfm4d:importxbdlabels", "gfm4d:inpaint", "gfm4d:predict",
                    "gfm4d:superres", "gfm4d:train"]
ENGINE_ONLY_LIBRARIES = {"torch", "diffusers", "transformers", "engine", "rasterio", "fastapi", "safetensors"}


def algorithms():
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    return [registry.algorithmById(algorithm_id) for algorithm_id in GFM4D_ALGORITHMS]


def metadata() -> dict:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(REPO / "metadata.txt", encoding="utf-8")
    return dict(parser["general"])


def toolbox_search(text: str) -> list:
    """The GFM4D algorithm ids the Processing toolbox shows for a search, as its filter finds them."""
    from qgis.core import QgsApplication
    from qgis.gui import QgsProcessingToolboxProxyModel

    model = QgsProcessingToolboxProxyModel(None, QgsApplication.processingRegistry())
    model.setFilterString(text)
    found = []

    def walk(parent):
        for row in range(model.rowCount(parent)):
            index = model.index(row, 0, parent)
            algorithm = model.toolboxModel().algorithmForIndex(model.mapToSource(index))
            if algorithm is not None and algorithm.provider().id() == "gfm4d":
                found.append(algorithm.id())
            walk(index)

    walk(model.index(-1, -1))
    return sorted(set(found))


@pytest.mark.parametrize("search, expected", [
    ("flood", ["gfm4d:dataset", "gfm4d:importxbdlabels", "gfm4d:inpaint", "gfm4d:train"]),
    ("damage", ["gfm4d:dataset", "gfm4d:importxbdlabels", "gfm4d:inpaint"]),
    ("xview", ["gfm4d:dataset", "gfm4d:importxbdlabels", "gfm4d:inpaint"]),
    ("synthetic", ["gfm4d:dataset", "gfm4d:generate", "gfm4d:inpaint", "gfm4d:predict", "gfm4d:superres"]),
    ("super resolution", ["gfm4d:superres"]),
    ("time series", ["gfm4d:predict"]),
    ("fine-tune", ["gfm4d:train"]),
    ("lora", ["gfm4d:train"]),
])
def test_toolbox_search_finds_the_algorithms_by_their_tags(provider, search, expected):
    assert toolbox_search(search) == expected


def github_anchors(markdown: str) -> set:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces as '-')."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_algorithm_has_a_help_page_on_the_plugin_homepage(provider):
    anchors = github_anchors((REPO / "docs" / "qgis.md").read_text(encoding="utf-8"))
    homepage = metadata()["homepage"]
    assert homepage.endswith("/docs/qgis.md")
    for algorithm in algorithms():
        page, _, anchor = algorithm.helpUrl().partition("#")
        assert page == homepage, algorithm.id()
        assert anchor in anchors, f"{algorithm.id()}: docs/qgis.md has no heading for #{anchor}"


def test_labels_are_short_and_the_explanations_are_in_the_help(provider):
    for algorithm in algorithms():
        help_text = algorithm.shortHelpString()
        for definition in algorithm.parameterDefinitions():
            label = definition.description()
            assert len(label) <= 22 and "empty" not in label.lower() and ":" not in label, (algorithm.id(), label)
            if not definition.isDestination():
                assert definition.help(), (algorithm.id(), label)
            if definition.help():
                assert f"<dt><b>{label}</b></dt><dd>" in help_text, (algorithm.id(), label)
        matrix = algorithm.parameterDefinition("CLASSES")
        if matrix is not None:
            assert matrix.headers() == ["Class", "Prompt", "Inpaint"]


def test_the_batch_size_is_left_to_the_engine_unless_given(provider):
    for algorithm in algorithms():
        if algorithm.id() in ("gfm4d:enginestatus", "gfm4d:importxbdlabels"):
            continue
        batch = algorithm.parameterDefinition("BATCH_SIZE")
        assert batch.defaultValue() is None and batch.flags() & FLAG_OPTIONAL, algorithm.id()


def test_metadata_is_ready_for_the_official_plugin_repository():
    fields = metadata()
    assert fields["category"] == "Raster"
    repository = fields["repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository)
    assert fields["tracker"] == f"{repository}/issues"
    assert fields["homepage"].startswith(f"{repository}/blob/")
    about = fields["about"]
    assert "gfm4d serve" in about and "make setup" in about and "Start local engine" in about
    assert "Raster > GFM4D" in about
    for field in ("name", "qgisMinimumVersion", "description", "version", "author", "email", "tags", "icon"):
        assert fields.get(field, "").strip(), field
    assert fields["experimental"] in ("True", "False") and fields["hasProcessingProvider"] == "yes"
    # the menu is where the category says (QGIS puts a category's plugins in that menu)
    plugin_source = (REPO / "qgis_plugin" / "plugin.py").read_text(encoding="utf-8")
    assert "addPluginToRasterMenu" in plugin_source and "addPluginToMenu(" not in plugin_source


def test_settings_are_the_tests_own(qgis_app, tmp_path_factory):
    from qgis.core import QgsSettings

    written = Path(QgsSettings().fileName()).resolve()
    assert written.is_relative_to(Path(tmp_path_factory.getbasetemp()).resolve()), written
    assert not written.is_relative_to(Path.home().resolve() / ".config")


def test_plugin_code_never_imports_the_engine_or_its_libraries():
    for folder in ("processing_algorithms", "qgis_plugin"):
        for path in sorted((REPO / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                assert not {name.split(".")[0] for name in names} & ENGINE_ONLY_LIBRARIES, f"{path.name} imports {names}"


def test_running_jobs_leaves_torch_out_of_qgis(provider, tmp_path):
    import processing

    processing.run("gfm4d:generate", {"EXTENT": "500000,500032,4100000,4100032 [EPSG:32618]", "RESOLUTION": 1,
                                      "STEPS": 1, "PROMPT": "a fmow satellite image", "OUTPUT": str(tmp_path / "x.tif")})
    assert (tmp_path / "x.tif").is_file()
    leaked = {name for name in sys.modules if name.split(".")[0] in ENGINE_ONLY_LIBRARIES}
    assert not leaked, sorted(leaked)[:20]
