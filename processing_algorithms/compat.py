"""Enum values whose names moved between QGIS 3.22, 3.40 and QGIS 4 / Qt 6, resolved once.

QGIS 3.36+ moved many enums into scoped `Qgis.*` enums (the old names are deprecated and gone
in QGIS 4), and PyQt6 only knows Qt's scoped names (`QNetworkRequest.KnownHeaders.X`). Every
module of the plugin takes such values from here, so a rename is fixed in one place. The newest
name is tried first; a name missing everywhere fails at import with the names tried.
"""

from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsBlockingNetworkRequest,
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingParameterDateTime,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayerTemporalProperties,
    QgsVectorFileWriter,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QMetaType, QVariant
from qgis.PyQt.QtNetwork import QNetworkRequest

_NAMESPACE = {
    "Qgis": Qgis,
    "QgsBlockingNetworkRequest": QgsBlockingNetworkRequest,
    "QgsCoordinateReferenceSystem": QgsCoordinateReferenceSystem,
    "QgsFeatureRequest": QgsFeatureRequest,
    "QgsFeatureSink": QgsFeatureSink,
    "QgsProcessing": QgsProcessing,
    "QgsProcessingParameterDateTime": QgsProcessingParameterDateTime,
    "QgsProcessingParameterDefinition": QgsProcessingParameterDefinition,
    "QgsProcessingParameterField": QgsProcessingParameterField,
    "QgsProcessingParameterFile": QgsProcessingParameterFile,
    "QgsProcessingParameterNumber": QgsProcessingParameterNumber,
    "QgsRasterDataProvider": QgsRasterDataProvider,
    "QgsRasterFileWriter": QgsRasterFileWriter,
    "QgsRasterLayerTemporalProperties": QgsRasterLayerTemporalProperties,
    "QgsVectorFileWriter": QgsVectorFileWriter,
    "QgsWkbTypes": QgsWkbTypes,
    "QMetaType": QMetaType,
    "QVariant": QVariant,
    "QNetworkRequest": QNetworkRequest,
}


def first_defined(*names: str):
    """The value of the first dotted name that exists (e.g. "Qgis.WkbType.Polygon")."""
    for name in names:
        head, *rest = name.split(".")
        value = _NAMESPACE.get(head)
        for part in rest:
            value = getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    raise AttributeError(f"none of {', '.join(names)} exists in this QGIS / Qt version")


# Processing parameter types and flags
SOURCE_RASTER = first_defined("Qgis.ProcessingSourceType.Raster", "QgsProcessing.TypeRaster")
SOURCE_VECTOR_POLYGON = first_defined("Qgis.ProcessingSourceType.VectorPolygon", "QgsProcessing.TypeVectorPolygon")
NUMBER_INTEGER = first_defined("Qgis.ProcessingNumberParameterType.Integer", "QgsProcessingParameterNumber.Integer")
NUMBER_DOUBLE = first_defined("Qgis.ProcessingNumberParameterType.Double", "QgsProcessingParameterNumber.Double")
FIELD_ANY = first_defined("Qgis.ProcessingFieldParameterDataType.Any", "QgsProcessingParameterField.Any")
FILE_BEHAVIOR_FILE = first_defined("Qgis.ProcessingFileParameterBehavior.File", "QgsProcessingParameterFile.File")
DATETIME_DATE = first_defined("Qgis.ProcessingDateTimeParameterDataType.Date", "QgsProcessingParameterDateTime.Date")
FLAG_ADVANCED = first_defined("Qgis.ProcessingParameterFlag.Advanced", "QgsProcessingParameterDefinition.FlagAdvanced")
FLAG_OPTIONAL = first_defined("Qgis.ProcessingParameterFlag.Optional", "QgsProcessingParameterDefinition.FlagOptional")

# Geometry and field types
WKB_MULTIPOLYGON = first_defined("Qgis.WkbType.MultiPolygon", "QgsWkbTypes.MultiPolygon")
# QgsField takes QMetaType.Type from QGIS 3.38 (Qt 5 has both enums, so the version decides)
_FIELD_TYPES_ARE_METATYPES = Qgis.QGIS_VERSION_INT >= 33800
FIELD_STRING = QMetaType.Type.QString if _FIELD_TYPES_ARE_METATYPES else QVariant.String
FIELD_INT = QMetaType.Type.Int if _FIELD_TYPES_ARE_METATYPES else QVariant.Int
FAST_INSERT = first_defined("QgsFeatureSink.Flag.FastInsert", "QgsFeatureSink.FastInsert")
FEATURE_NO_GEOMETRY = first_defined("Qgis.FeatureRequestFlag.NoGeometry", "QgsFeatureRequest.NoGeometry")

# Writers, providers, CRS
RASTER_WRITER_OK = first_defined("Qgis.RasterFileWriterResult.Success", "QgsRasterFileWriter.NoError")
VECTOR_WRITER_OK = first_defined("QgsVectorFileWriter.WriterError.NoError", "QgsVectorFileWriter.NoError")
RASTER_CAPABILITY_SIZE = first_defined("Qgis.RasterInterfaceCapability.Size", "QgsRasterDataProvider.Size")
RASTER_FIXED_TEMPORAL_RANGE = first_defined(
    "Qgis.RasterTemporalMode.FixedTemporalRange", "QgsRasterLayerTemporalProperties.ModeFixedTemporalRange"
)
CRS_WKT_PREFERRED = first_defined("Qgis.CrsWktVariant.Preferred", "QgsCoordinateReferenceSystem.WKT_PREFERRED")

# Network
REQUEST_OK = first_defined("QgsBlockingNetworkRequest.ErrorCode.NoError", "QgsBlockingNetworkRequest.NoError")
REQUEST_TIMEOUT = first_defined("QgsBlockingNetworkRequest.ErrorCode.TimeoutError", "QgsBlockingNetworkRequest.TimeoutError")
HEADER_CONTENT_TYPE = first_defined("QNetworkRequest.KnownHeaders.ContentTypeHeader", "QNetworkRequest.ContentTypeHeader")
ATTRIBUTE_HTTP_STATUS = first_defined(
    "QNetworkRequest.Attribute.HttpStatusCodeAttribute", "QNetworkRequest.HttpStatusCodeAttribute"
)


def has_capability(provider, capability) -> bool:
    """Whether a raster provider has a capability (a flags value in 3.22, a scoped enum set later)."""
    return bool(provider.capabilities() & capability)
