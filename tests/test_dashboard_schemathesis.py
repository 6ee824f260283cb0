"""The OpenAPI document against the live server: schemathesis generates requests from it (query
parameters, path ids, bodies; with and without the token) and no answer is a server error or
breaks the document's promises."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

import taskswarm as ts


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, str]]:
    with ts.LocalCluster(slaves=2, workers=1, dashboard="127.0.0.1:0") as cluster:
        app = cluster.connect()
        assert [f.result(timeout=30) for f in app.push_tasks([ts.FunctionTask(abs, -1)])] == [1]
        yield app.status()["master"]["dashboard"], cluster.key.dashboard_token()


def check(case, url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    response = case.call(base_url=url, headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
    case.validate_response(response)
    return response.status_code


def every_operation(url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/api/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "token"])
def test_no_request_the_document_allows_gets_a_server_error(live, with_token):
    url, token = live
    operations = every_operation(url)
    assert len(operations) >= 10
    answers: list[int] = []
    for operation in operations:
        if with_token and operation.path.endswith("/drain"):
            continue  # draining would take the cluster's slaves away from the other examples

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            answers.append(check(case, url, token if with_token else None))

        run()
    assert len(answers) >= 5 * len(operations)  # it really asked
    assert (401 in answers) != with_token  # actions without the token are refused
