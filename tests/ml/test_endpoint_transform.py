"""Endpoint-mode transform: the same DataFrame scored in-cluster and through a Ray Serve endpoint is equal (chispa);
creation policies, context manager, batch scoring, auth, and the client's batching and retry rules over real HTTP.
The endpoint's replicas run the Python predictor, so it is compared exactly with in-cluster scoring by the same
predictor (`nativeScoring=False`), and to float32 precision with the default in-cluster path (Spark ML's JVM model
for these linear models)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import scipy.sparse as sp
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

import recordio
from ray_backend.serving import endpoint, protocol
from sparkml_ext.ml.endpoint import EndpointClient, EndpointError, request_bodies, score_with_endpoint
from sparkml_ext.ml.estimator import RayModel
from tests.ml.helpers import plain
from tests.ray_backend.helpers import linear_artifact

pytestmark = [pytest.mark.spark, pytest.mark.ray]
DIM = 30
TOKEN = "tx-token"


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return linear_artifact(tmp_path_factory.mktemp("tx") / "model", seed=5, dim=DIM)


@pytest.fixture(scope="module")
def data(cancer_vectors):
    """The breast-cancer vectors, some rows as sparse vectors (both encodings travel)."""
    to_sparse = F.udf(lambda v: Vectors.sparse(v.size, {i: x for i, x in enumerate(v) if i % 3}) if v else v,
                      returnType=cancer_vectors.schema["features"].dataType, useArrow=False)
    return cancer_vectors.withColumn("features", F.when(F.col("id") % 4 == 0, to_sparse("features"))
                                     .otherwise(F.col("features"))).cache()


@pytest.fixture(scope="module")
def served(ray_cluster, uri):
    """An endpoint created by the first endpoint transform (CREATE_ON_TRANSFORM), with a bearer token."""
    model = RayModel.fromArtifact(uri, endpointName="tx-main").setEndpointToken(TOKEN)
    yield model
    for e in endpoint.list_endpoints():
        if e.name.startswith("tx-"):
            endpoint.delete(e.name)


def in_cluster(uri: str, **params) -> RayModel:
    """In-cluster scoring by the predictor the endpoint runs."""
    return RayModel.fromArtifact(uri, nativeScoring=False, **params)


def test_endpoint_transform_equals_in_cluster(served, uri, data):
    assert endpoint.get("tx-main") is None
    expected = in_cluster(uri).transform(data)
    got = served.copy().setMaxBatchRecords(37).setMaxConcurrentRequests(3).transform(data)  # many small requests
    assert endpoint.get("tx-main") is not None  # CREATE_ON_TRANSFORM made it
    assert got.columns == expected.columns
    # dense-trained: only the features column goes through Python (Spark >= 4.1; whole rows before that)
    assert ("ArrowEvalPython" if hasattr(F, "arrow_udf") else "PythonMapInArrow") in plan(got)
    assert_df_equality(got, expected)
    cols = ["id", "prediction", "probability", "score", "predicted_label"]  # rawPrediction: a float32 logit
    assert_approx_df_equality(plain(got.select(cols)), plain(RayModel.fromArtifact(uri).transform(data).select(cols)),
                              precision=1e-6)
    counts = endpoint.variant_counts("tx-main")["AllTraffic"]
    assert counts["records"] >= data.count() and counts["requests"] >= data.count() // 37


def plan(df) -> str:
    return df._jdf.queryExecution().executedPlan().toString()


def test_a_sparse_trained_model_scores_whole_rows_through_the_endpoint(ray_cluster, data, tmp_path):
    sparse_uri = linear_artifact(tmp_path / "sparse", seed=6, dim=DIM, sparse=True)
    expected = in_cluster(sparse_uri).transform(data)
    model = RayModel.fromArtifact(sparse_uri, endpointName="tx-sparse").setMaxBatchRecords(50)
    try:
        got = model.transform(data)
        assert "MapInArrow" in plan(got)  # sparse rows stay sparse on the way to the endpoint
        assert_df_equality(got, expected)
    finally:
        endpoint.delete("tx-sparse")


def test_invalid_rows_are_handled_like_in_cluster(served, uri, data, spark):
    bad = spark.createDataFrame([(10_000, None, 0.0), (10_001, Vectors.dense([1.0, 2.0]), 1.0)],
                                data.schema)
    mixed = data.limit(40).unionByName(bad)
    url = endpoint.get("tx-main").url
    for mode in ("keep", "skip"):
        expected = in_cluster(uri, handleInvalid=mode).transform(mixed)
        got = RayModel.fromArtifact(uri, handleInvalid=mode, endpointUrl=url).setEndpointToken(TOKEN)
        assert_df_equality(got.transform(mixed), expected, ignore_row_order=True)
    with pytest.raises(Exception, match="not of size 30"):
        RayModel.fromArtifact(uri, endpointUrl=url).setEndpointToken(TOKEN).transform(mixed).collect()


def test_auth_401_without_the_token(served, data, uri, monkeypatch):
    monkeypatch.delenv("SPARKML_EXT_ENDPOINT_TOKEN", raising=False)
    url = endpoint.get("tx-main").url
    start = time.monotonic()
    with pytest.raises(Exception, match="401"):
        RayModel.fromArtifact(uri, endpointUrl=url, maxRetries=5, retryBackoff=2.0).transform(data).collect()
    assert time.monotonic() - start < 60  # 4xx is not retried (5 retries at 2 s would take over 60 s)


def test_a_wrong_url_fails_fast_with_the_servers_message(served, data, uri):
    url = endpoint.get("tx-main").url.replace("/endpoints/tx-main/", "/endpoints/tx-nothing/")
    with pytest.raises(Exception, match="404"):
        RayModel.fromArtifact(uri, endpointUrl=url, retryBackoff=5.0).transform(data).collect()


def test_do_not_create_needs_an_existing_endpoint(ray_cluster, uri, data):
    model = RayModel.fromArtifact(uri, endpointName="tx-absent", endpointCreationPolicy="DO_NOT_CREATE")
    with pytest.raises(ValueError, match="'tx-absent' does not exist"):
        model.transform(data)
    assert endpoint.get("tx-absent") is None
    with pytest.raises(ValueError, match="endpointCreationPolicy"):
        model.setEndpointCreationPolicy("SOMETIMES")


def test_a_routable_endpoint_host_needs_a_token_before_anything_is_deployed(ray_cluster, uri, data, monkeypatch):
    monkeypatch.delenv("SPARKML_EXT_ENDPOINT_TOKEN", raising=False)
    model = RayModel.fromArtifact(uri, endpointName="tx-open", endpointHost="0.0.0.0")
    with pytest.raises(ValueError, match="'0.0.0.0' exposes endpoints beyond this machine: give them a bearer token"):
        model.transform(data)
    assert endpoint.get("tx-open") is None


def test_create_on_construct_and_the_context_manager(ray_cluster, uri, data):
    expected = in_cluster(uri).transform(data)
    with RayModel(uri, endpointName="tx-ctx", endpointCreationPolicy="CREATE_ON_CONSTRUCT") as model:
        assert endpoint.get("tx-ctx") is not None  # created by the constructor
        reuse = RayModel.fromArtifact(uri, endpointName="tx-ctx", endpointCreationPolicy="DO_NOT_CREATE")
        assert_df_equality(reuse.transform(data), expected)
        assert_df_equality(model.transform(data), expected)
    assert endpoint.get("tx-ctx") is None  # the model that created it deleted it on exit
    assert reuse.createEndpoint().deleteEndpoint() is True  # explicit teardown
    assert endpoint.get("tx-ctx") is None


def test_batch_scoring_creates_scores_and_deletes(ray_cluster, uri, data, tmp_path):
    expected = in_cluster(uri).transform(data)
    before = {e.name for e in endpoint.list_endpoints()}
    scored = score_with_endpoint(RayModel.fromArtifact(uri), data, name="tx-batch")
    assert endpoint.get("tx-batch") is None
    assert_df_equality(scored, expected)  # materialized: readable after the endpoint is gone
    written = score_with_endpoint(RayModel.fromArtifact(uri), data, output=str(tmp_path / "scored"))
    assert {e.name for e in endpoint.list_endpoints()} == before
    assert_df_equality(written, expected, ignore_row_order=True)


# ---------------------------------------------------------------- client rules (real HTTP, no Spark)

def test_request_bodies_respect_bytes_and_records():
    x = np.random.default_rng(0).normal(size=(101, 7)).astype(np.float32)
    whole = bytes(recordio.encode_dense(x))
    bodies = request_bodies(x, 10, 500)
    assert b"".join(bytes(b) for b, _ in bodies) == whole
    assert sum(n for _, n in bodies) == 101
    assert all(n <= 10 and len(b) <= 500 for b, n in bodies)
    csr = sp.random(50, 1000, density=0.02, format="csr", dtype=np.float32, random_state=1)
    bodies = request_bodies(csr, 1000, 200)
    assert b"".join(bytes(b) for b, _ in bodies) == bytes(recordio.encode_sparse(csr))
    assert all(len(b) <= 200 or n == 1 for b, n in bodies)
    assert [n for _, n in request_bodies(x, 1000, 1)] == [1] * 101  # a record larger than the limit goes alone


class _Scripted(BaseHTTPRequestHandler):
    """Answers POSTs with the next status from `script` (200 = a valid score response for the records sent)."""

    script: list[int] = []
    hits = 0

    def do_POST(self):  # noqa: N802 (http.server API)
        type(self).hits += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            n = len(recordio.scan_frames(body))
            payload = bytes(protocol.encode_outputs({"score": np.arange(n, dtype=np.float32)}, ["score"]))
        else:
            payload = f"scripted {status}".encode()
        self.send_response(status)
        self.send_header("Content-Type", protocol.RECORDIO if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.hits = 0
    yield server, f"http://127.0.0.1:{server.server_address[1]}/invocations"
    server.shutdown()
    server.server_close()


def test_client_retries_429_and_5xx_then_succeeds(scripted):
    _, url = scripted
    _Scripted.script = [503, 429, 500]
    body = bytes(recordio.encode_dense(np.zeros((4, 3), np.float32)))
    out = EndpointClient(url, max_retries=3, backoff=0.01).predict(body, 4)
    assert out["score"].tolist() == [0, 1, 2, 3] and _Scripted.hits == 4


def test_client_gives_up_after_its_retries(scripted):
    _, url = scripted
    _Scripted.script = [502] * 10
    with pytest.raises(EndpointError, match="after 3 attempts.*502"):
        EndpointClient(url, max_retries=2, backoff=0.01).predict(b"x", 1)
    assert _Scripted.hits == 3


def test_client_fails_fast_on_4xx_with_the_servers_message(scripted):
    _, url = scripted
    _Scripted.script = [400, 200]
    with pytest.raises(EndpointError, match="400: scripted 400") as err:
        EndpointClient(url, max_retries=5, backoff=1.0).predict(b"x", 1)
    assert err.value.status == 400 and _Scripted.hits == 1


def test_client_retries_connection_errors():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(EndpointError, match="after 4 attempts.*connection error"):
        EndpointClient(f"http://127.0.0.1:{port}", max_retries=3, backoff=0.05).predict(b"x", 1)
    assert time.monotonic() - start >= 0.05 * (1 + 2 + 4) / 2  # backoff slept (at least half of each step)


def test_client_refuses_a_response_with_the_wrong_row_count(scripted):
    _, url = scripted
    body = bytes(recordio.encode_dense(np.zeros((4, 3), np.float32)))
    with pytest.raises(EndpointError, match="answered 5 records"):
        EndpointClient(url).predict(body, 5)
