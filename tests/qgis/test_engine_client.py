"""The engine client on QgsBlockingNetworkRequest: bodies, errors that say what to do, tokens, models."""

import email
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from helpers import free_port  # noqa: E402

from processing_algorithms.engine_client import EngineClient, EngineError, EngineUnreachable  # noqa: E402
from processing_algorithms.multipart import job_body  # noqa: E402
from processing_algorithms.settings import EngineSettings  # noqa: E402

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


@pytest.fixture
def fake_engine():
    """Start the stand-in server in a mode; its URL."""
    started = []

    def start(mode: str) -> str:
        process = subprocess.Popen([sys.executable, str(FAKE_ENGINE), mode], stdout=subprocess.PIPE, text=True)
        started.append(process)
        return f"http://127.0.0.1:{int(process.stdout.readline())}"

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def test_multipart_body_holds_params_then_files_in_order(tmp_path):
    first, second = tmp_path / "a.tif", tmp_path / 'we"ird.tif'
    first.write_bytes(b"\x00\x01binary\r\n--not-a-boundary")
    second.write_bytes(b"second")
    content_type, body = job_body({"task": "predict", "dates": ["2020-01-01", None]},
                                  [("frames", str(first)), ("frames", str(second))])
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["params", "frames", "frames"]
    assert json.loads(parts[0].get_payload(decode=True)) == {"task": "predict", "dates": ["2020-01-01", None]}
    assert parts[1].get_payload(decode=True) == first.read_bytes()
    assert parts[2].get_payload(decode=True) == b"second"
    assert parts[2].get_filename() == "we_ird.tif"


def test_engine_down_says_how_to_start_it(qgis_app):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineUnreachable) as raised:
        EngineClient(EngineSettings(url=url)).health()
    message = str(raised.value)
    assert url in message and "Connection refused" in message
    assert "Start local engine" in message and "gfm4d serve" in message


def test_a_server_without_api_v1_is_told_apart(qgis_app, fake_engine):
    url = fake_engine("old-api")
    with pytest.raises(EngineError, match="does not answer GFM4D's API v1"):
        EngineClient(EngineSettings(url=url)).health()


def test_a_server_that_is_not_an_engine_is_told_apart(qgis_app, fake_engine):
    url = fake_engine("not-gfm4d")
    with pytest.raises(EngineError, match="not JSON: is the URL that of a GFM4D engine"):
        EngineClient(EngineSettings(url=url)).health()


def test_slow_engine_times_out_with_advice(qgis_app, fake_engine):
    url = fake_engine("slow")
    with pytest.raises(EngineUnreachable, match="did not answer within 1 s.*raise the request timeout"):
        EngineClient(EngineSettings(url=url, request_timeout_s=1.0)).health()


def test_token_from_settings_and_from_the_auth_manager(qgis_app, fake_engine):
    from qgis.core import QgsApplication, QgsAuthMethodConfig

    url = fake_engine("token")
    with pytest.raises(EngineError, match="needs a token"):
        EngineClient(EngineSettings(url=url)).health()
    assert EngineClient(EngineSettings(url=url, token="s3cret")).health()["seen_auth"] == "Bearer s3cret"

    manager = QgsApplication.authManager()
    assert manager.setMasterPassword("gfm4d-tests", True)
    config = QgsAuthMethodConfig("Basic")
    config.setName("gfm4d engine")
    config.setConfig("username", "gfm4d")
    config.setConfig("password", "s3cret")
    assert manager.storeAuthenticationConfig(config)[0]
    health = EngineClient(EngineSettings(url=url, authcfg=config.id())).health()
    assert health["seen_auth"] == "Bearer s3cret"
    with pytest.raises(EngineError, match="cannot be loaded"):
        EngineClient(EngineSettings(url=url, authcfg="nosuch1"))


def test_missing_model_and_wrong_task_name_the_models_that_fit(provider, engine):
    client = EngineClient(EngineSettings(url=engine.url))
    with pytest.raises(EngineError) as raised:
        client.require_model("generate", "no-such-model")
    assert "no model 'no-such-model'" in str(raised.value)
    assert f"Models that do generate: {', '.join(engine.models_for('generate'))}." in str(raised.value)
    with pytest.raises(EngineError) as raised:
        client.require_model("predict", "demo-satunet")
    assert f"does not do predict; models on this engine that do: {', '.join(engine.models_for('predict'))}." in str(raised.value)
    with pytest.raises(EngineError, match="does not run the teleport task"):
        client.require_task("teleport")


def test_model_parameter_lists_the_engines_models_or_takes_text(provider, engine):
    from qgis.core import QgsApplication, QgsProcessingParameterEnum, QgsProcessingParameterString, QgsSettings

    from processing_algorithms.model_catalog import CATALOG

    registry = QgsApplication.processingRegistry()
    generate, predict = registry.createAlgorithmById("gfm4d:generate"), registry.createAlgorithmById("gfm4d:predict")
    model = generate.parameterDefinition("MODEL")
    assert isinstance(model, QgsProcessingParameterEnum) and model.usesStaticStrings()
    assert model.options() == engine.models_for("generate") and "demo-satunet" in model.options()
    assert predict.parameterDefinition("MODEL").options() == engine.models_for("predict")
    assert "demo-satunet" not in engine.models_for("predict")

    QgsSettings().setValue("gfm4d/url", f"http://127.0.0.1:{free_port()}")
    CATALOG.invalidate()
    try:
        offline = registry.createAlgorithmById("gfm4d:generate")
        assert isinstance(offline.parameterDefinition("MODEL"), QgsProcessingParameterString)
        assert "Cannot reach" in CATALOG.last_error
    finally:
        QgsSettings().setValue("gfm4d/url", engine.url)
        CATALOG.invalidate()
