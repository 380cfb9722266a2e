"""schemathesis against a real engine process: generated requests from its own OpenAPI document.

Every operation gets a bounded number of generated requests (valid and invalid); none may be
answered with a 5xx, and every answer must match the document's response schemas and media
types. Jobs the generator manages to get accepted are cancelled at once, so the worker stays free.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from engine.server.launcher import start_engine

EXAMPLES_PER_OPERATION = 30  # per operation, valid and invalid requests together
EXAMPLES_FOR_JOBS = 100  # POST /v1/jobs: where the request bodies are
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


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


def check_operations(url: str, examples: int = EXAMPLES_PER_OPERATION, job_examples: int = EXAMPLES_FOR_JOBS) -> list[str]:
    """Run generated cases against every operation; the failures, one line each."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=job_examples if operation.label == "POST /v1/jobs" else examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case) -> None:
            response = case.call(base_url=url, timeout=30)
            if case.method.upper() == "POST" and response.status_code == 202:
                requests.post(f"{url}/v1/jobs/{response.json()['id']}/cancel", timeout=10)
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # schemathesis raises a group of check failures
                failures.append(f"{operation.label}: {response.status_code} {type(exc).__name__}: {str(exc)[:300]}")

        exercise()
    return failures


def test_no_generated_request_gets_a_server_error_or_breaks_the_schema(engine):
    failures = check_operations(engine.url)
    assert not failures, "\n".join(failures)
    assert requests.get(f"{engine.url}/v1/health", timeout=10).status_code == 200
