"""schemathesis against a real engine process: generated requests from its own OpenAPI document.

Every operation gets a bounded number of generated requests (valid and invalid); none may be
answered with a 5xx, and every answer must match the document's response schemas. Jobs the
generator manages to get accepted are cancelled at once, so the worker stays free.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from engine.server.launcher import start_engine

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from engine.models.demo import build_demo_models

    models = tmp_path_factory.mktemp("models")
    build_demo_models(models)
    allowed = tmp_path_factory.mktemp("allowed")
    process = start_engine(models, tmp_path_factory.mktemp("work"), allowed_dirs=[allowed], env={"GFM4D_DEVICE": "cpu"},
                           extra_args=["--max-output-mpx", "0.005", "--max-upload-mb", "1"])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def engine_schema(engine):
    return schemathesis.openapi.from_url(f"{engine.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("engine_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error_or_breaks_the_schema(case, engine):
    response = case.call(timeout=30)
    if case.method.upper() == "POST" and response.status_code == 202:
        requests.post(f"{engine.url}/v1/jobs/{response.json()['id']}/cancel", timeout=10)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
