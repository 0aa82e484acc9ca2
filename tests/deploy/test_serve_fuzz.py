"""The server's API fuzzed from its own OpenAPI schema with schemathesis: a bounded number of generated
requests per operation, against the real model on 127.0.0.1. No answer may be a 5xx, every request
must be answered within its timeout, and every error must be the server's JSON error body."""

import pytest

from convforge.deploy.server import ServeSettings, create_app
from convforge.deploy.serving import open_serving_model
from tests.deploy.serving import serve_app

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 40  # per operation


def fuzz(operation, url: str, seen: list) -> None:
    """EXAMPLES generated requests of one operation; each answered, none a 5xx, errors as JSON."""

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
    def check(case):
        response = case.call(base_url=url, timeout=10)  # a hang fails here
        seen.append((operation.label, response.status_code))
        assert response.status_code < 500, (operation.label, response.status_code, response.text[:300])
        if response.status_code >= 400:
            body = response.json()
            assert body["status"] == response.status_code and body["error"], body

    check()


def test_no_generated_request_breaks_the_server(tiny_run):
    app = create_app(open_serving_model(tiny_run.run.path), ServeSettings(max_images=8, timeout_ms=5000))
    schema = schemathesis.openapi.from_dict(app.openapi())
    seen = []
    with serve_app(app) as url:
        for result in schema.get_all_operations():
            fuzz(result.ok(), url, seen)
    labels = {label for label, _ in seen}
    assert "POST /v1/predict" in labels and "GET /v1/models" in labels
    assert sum(label == "POST /v1/predict" for label, _ in seen) >= 10
