"""Endpoints under abuse, over real HTTP on the session's Ray cluster: oversize bodies, record-count bombs,
NaN/Inf/null and mistyped inputs, wrong dimensions, a model that raises, returns NaN, sleeps past the deadline or
would densify too much, overload, unschedulable replicas, exposure without a token — and after each, /ping is 200."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recordio
from ray_backend import artifact
from ray_backend.algorithm import Algorithm, as_dense
from ray_backend.algorithms.torch_module import TorchModule
from ray_backend.serving import endpoint, protocol
from tests.ray_backend.helpers import wait_for

DIM = 3
MAX_RECORDS = 100
MAX_BODY = 64 * 1024
TIMEOUT_S = 3.0
SECRET = "secret-internal-detail /opt/model/weights token=hunter2"
RAISE, NAN, INF, SLEEP = 13.0, 7.0, 8.0, 5.0  # feature 0 values that make `Misbehaving` misbehave
TORCH_DIM = 50_000
TORCH_BOUND = 4 * 1024 * 1024  # what BoundedTorch may densify per predict call
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Misbehaving(Algorithm):
    """Test model: score = a record's feature sum, vector = (sum, -sum); a record whose feature 0 is 13 makes it
    raise (with internal text), 7 / 8 gives a NaN / infinite output, 5 makes it sleep feature 1 seconds (<= 10)."""

    name = "misbehaving"
    requires_label = False

    @classmethod
    def validate(cls, hyperparameters: dict) -> dict:
        """No hyperparameters."""
        return {"epochs": 1, **hyperparameters}

    def train(self, ctx):  # noqa: ANN001, ANN201 - never trained
        """Serving tests only."""
        raise NotImplementedError("Misbehaving is a serving test model")

    def output_columns(self) -> list[str]:
        """A scalar and a 2-vector."""
        return ["score", "vector"]

    def predict(self, features) -> dict[str, np.ndarray]:  # noqa: ANN001
        """Score, or misbehave as feature 0 says."""
        x = as_dense(features)
        first = x[:, 0]
        if (first == RAISE).any():
            raise RuntimeError(SECRET)
        if (first == SLEEP).any():
            time.sleep(float(min(x[first == SLEEP, 1].max(), 10.0)))
        score = x.sum(axis=1)
        score[first == NAN] = np.nan
        score[first == INF] = np.inf
        return {"score": score, "vector": np.stack([score, -score], axis=1)}


class BoundedTorch(TorchModule):
    """The torch algorithm under a memory bound: it refuses a predict call whose input it would densify beyond
    TORCH_BOUND bytes (instead of allocating them, as the plain one does)."""

    def predict(self, features) -> dict[str, np.ndarray]:  # noqa: ANN001
        """Refuse over the bound, else the torch forward pass."""
        dense = features.shape[0] * features.shape[1] * 4
        if dense > TORCH_BOUND:
            raise MemoryError(f"asked to densify {dense} bytes")
        return super().predict(features)


def _artifact(path, algorithm: str, dim: int, outputs: list[str], hp: dict | None = None,
              tensors: dict | None = None) -> str:
    meta = {"algorithm": algorithm, "feature_dim": dim, "hyperparameters": hp or {}, "output_columns": outputs,
            "input_schema": {"sparse": False}, "state": {}}
    return artifact.save(str(path), meta, tensors or {})


def request(url: str, body: bytes | None = None, headers: dict | None = None, method: str = "POST",
            chunked: bool = False) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        if chunked:
            conn.request(method, parts.path, body=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                         headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, parts.path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def features(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Finite, nonzero values, none of them a magic number."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.1, 1.0, size=(n, dim)) * rng.choice([-1, 1], size=(n, dim))).astype(np.float32)


def encode(x: np.ndarray, kind: str) -> tuple[str, bytes]:
    """`x` (which may hold NaN/Inf) as a request body of `kind`: (Content-Type, body)."""
    rows = x.tolist()
    if kind == "recordio":
        return protocol.RECORDIO, bytes(recordio.encode_dense(x))
    if kind == "recordio sparse":
        return protocol.RECORDIO, bytes(recordio.encode_sparse(sp.csr_matrix(x)))
    if kind == "csv":
        return protocol.CSV, "\n".join(",".join(repr(v) for v in row) for row in rows).encode()
    if kind == "json":
        return protocol.JSON, json.dumps({"instances": [{"features": row} for row in rows]}).encode()
    if kind == "json sparse":
        inst = [{"data": {"features": {"keys": list(range(len(row))), "values": row, "shape": [len(row)]}}}
                for row in rows]
        return protocol.JSON, json.dumps({"instances": inst}).encode()
    assert kind == "libsvm"
    return protocol.LIBSVM, "\n".join("0 " + " ".join(f"{j}:{v!r}" for j, v in enumerate(row)) for row in rows).encode()


KINDS = ["recordio", "recordio sparse", "csv", "json", "json sparse", "libsvm"]


@pytest.fixture(scope="module")
def eps(ray_cluster, tmp_path_factory):
    """Three endpoints: `misc` (tight limits), `queue` (one request at a time, one waiting), `torch` (a torch model
    that refuses to densify more than TORCH_BOUND, served with a smaller dense bound)."""
    base = tmp_path_factory.mktemp("abuse")
    uri = _artifact(base / "misbehaving", f"{__name__}:Misbehaving", DIM, ["score", "vector"])
    rng = np.random.default_rng(3)
    weight, bias = rng.normal(size=(1, TORCH_DIM)).astype(np.float32), np.array([0.25], np.float32)
    torch_uri = _artifact(base / "torch", f"{__name__}:BoundedTorch", TORCH_DIM, ["score"],
                          {"module": "tests.ray_backend.models:linear", "module_kwargs": {"dim": TORCH_DIM}},
                          {"model.weight": weight, "model.bias": bias})
    made = {
        "misc": endpoint.deploy("abuse-misc", uri, max_records=MAX_RECORDS, max_body_bytes=MAX_BODY,
                                request_timeout_s=TIMEOUT_S, port=0),  # a free port, or the running Serve's
        "queue": endpoint.deploy("abuse-queue", uri, max_ongoing_requests=1, max_queued_requests=1,
                                 retry_after_s=2),
        "torch": endpoint.deploy("abuse-torch", torch_uri, max_dense_bytes=TORCH_BOUND // 2),
    }
    try:
        for ep in made.values():  # a replica's first request loads kernels: keep that out of the timed tests
            wait_for(lambda ep=ep: request(ep.url, b"1,2,3\n" if ep.name != "abuse-torch" else b"0 1:1\n",
                                            {"Content-Type": protocol.CSV if ep.name != "abuse-torch"
                                             else protocol.LIBSVM})[0] == 200, timeout=120)
            wait_for(lambda ep=ep: _counts(ep.name)["records"] >= 1)  # reports are ordered: all have landed
        yield {**made, "uri": uri, "weight": weight, "bias": bias}
    finally:
        for ep in made.values():
            endpoint.delete(ep.name)


def healthy(ep) -> None:
    """/ping is 200 and a valid request scores."""
    assert request(ep.ping_url, method="GET")[0] == 200
    status, _, body = request(ep.url, bytes(recordio.encode_dense(features(2))), {"Content-Type": protocol.RECORDIO})
    assert status == 200, body


def strict_json(body: bytes):
    """json.loads that refuses NaN/Infinity (not JSON)."""
    return json.loads(body, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c} in {body[:200]!r}"))


# ---------------------------------------------------------------- oversize bodies and record-count bombs

@FUZZ
@given(extra=st.integers(1, 3 * MAX_BODY), chunked=st.booleans(), ctype=st.sampled_from(protocol.REQUEST_TYPES))
def test_oversize_bodies_are_413_whether_announced_or_streamed(eps, extra, chunked, ctype):
    ep = eps["misc"]
    status, _, body = request(ep.url, b"1" * (MAX_BODY + extra), {"Content-Type": ctype}, chunked=chunked)
    assert status == 413 and f"limit of {MAX_BODY} bytes".encode() in body
    healthy(ep)


@FUZZ
@given(n=st.integers(MAX_RECORDS + 1, 5 * MAX_RECORDS), kind=st.sampled_from(KINDS + ["empty libsvm"]))
def test_record_count_bombs_are_413_naming_the_limit(eps, n, kind):
    """Bodies under the byte limit holding more records than the endpoint takes."""
    ep = eps["misc"]
    if kind == "empty libsvm":  # label-only lines: empty records, 2 bytes each
        ctype, body = protocol.LIBSVM, b"0\n" * n
    else:
        ctype, body = encode(np.ones((n, DIM), np.float32), kind)
    assert len(body) <= MAX_BODY
    status, _, message = request(ep.url, body, {"Content-Type": ctype})
    assert status == 413 and f"more than {MAX_RECORDS} records".encode() in message, (kind, message)
    healthy(ep)


def test_exactly_max_records_scores(eps):
    ep = eps["misc"]
    x = features(MAX_RECORDS)
    status, _, body = request(ep.url, bytes(recordio.encode_dense(x)), {"Content-Type": protocol.RECORDIO})
    assert status == 200 and protocol.decode_outputs(body)["score"].shape == (MAX_RECORDS,)


# ---------------------------------------------------------------- bad values

@FUZZ
@given(n=st.integers(1, 20), data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]),
       kind=st.sampled_from(KINDS))
def test_nan_and_inf_inputs_are_400_naming_record_and_feature(eps, n, data, bad, kind):
    ep = eps["misc"]
    r, f = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, DIM - 1))
    x = features(n, seed=n)
    x[r, f] = bad
    ctype, body = encode(x, kind)
    for accept in (protocol.JSON, protocol.RECORDIO):
        status, _, message = request(ep.url, body, {"Content-Type": ctype, "Accept": accept})
        assert status == 400, (kind, status, message)
        assert f"record {r}, feature {f} is".encode() in message, (kind, message)
    healthy(ep)


@FUZZ
@given(n=st.integers(1, 10), data=st.data(), sparse=st.booleans(),
       bad=st.sampled_from(["1.5", True, False, None, [1.0], {"v": 1.0}, 10 ** 400]))
def test_json_strings_booleans_nulls_and_nesting_are_400_not_coerced(eps, n, data, sparse, bad):
    ep = eps["misc"]
    r, f = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, DIM - 1))
    rows = features(n).tolist()
    rows[r][f] = bad
    if sparse:
        inst = [{"data": {"features": {"keys": [0, 1, 2], "values": row, "shape": [DIM]}}} for row in rows]
    else:
        inst = [{"features": row} for row in rows]
    status, _, message = request(ep.url, json.dumps({"instances": inst}).encode(), {"Content-Type": protocol.JSON})
    assert status == 400 and f"record {r}, feature {f} is".encode() in message, message
    healthy(ep)


@FUZZ
@given(n=st.integers(1, 8), dim=st.integers(1, 12).filter(lambda d: d != DIM), kind=st.sampled_from(KINDS))
def test_wrong_dimension_is_400(eps, n, dim, kind):
    """libsvm names no dimension: fewer features are a valid sparse record there, more an index out of range."""
    ep = eps["misc"]
    ctype, body = encode(features(n, dim=dim), kind)
    status, _, message = request(ep.url, body, {"Content-Type": ctype})
    if kind == "libsvm" and dim < DIM:
        assert status == 200, message
    else:
        assert status == 400 and b"expects 3" in message, (kind, message)
    healthy(ep)


def test_csv_text_and_libsvm_text_name_record_and_feature(eps):
    ep = eps["misc"]
    for ctype, body, words in [(protocol.CSV, b"1,2,3\n4,abc,6\n", b"record 1, feature 1 is 'abc'"),
                               (protocol.CSV, b"1,2,3\n4,5,\n", b"record 1, feature 2 is empty"),
                               (protocol.LIBSVM, b"0 0:1\n0 0:1 2:x\n", b"record 1 (libsvm line 2), feature 2")]:
        status, _, message = request(ep.url, body, {"Content-Type": ctype})
        assert status == 400 and words in message, message


# ---------------------------------------------------------------- the model misbehaving

def test_nan_and_inf_outputs_are_valid_json_nulls(eps):
    ep = eps["misc"]
    x = features(4)
    x[1, 0], x[3, 0] = NAN, INF
    body = bytes(recordio.encode_dense(x))
    status, headers, data = request(ep.url, body, {"Content-Type": protocol.RECORDIO, "Accept": protocol.JSON})
    assert status == 200
    rows = strict_json(data)["predictions"]
    assert rows[1] == {"score": None, "vector": [None, None]} and rows[3]["score"] is None
    assert rows[0]["score"] == pytest.approx(float(x[0].sum()), rel=1e-6)
    got = protocol.decode_response(data, headers["content-type"])  # what the Spark client reads: NaN
    assert np.isnan(got["score"][[1, 3]]).all() and np.isfinite(got["score"][[0, 2]]).all()
    status, _, data = request(ep.url, body, {"Content-Type": protocol.RECORDIO})
    score = protocol.decode_outputs(data)["score"]
    assert status == 200 and np.isnan(score[1]) and np.isinf(score[3])


def _counts(name: str) -> dict:
    return endpoint.variant_counts(name)["AllTraffic"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 30), data=st.data(), kind=st.sampled_from(KINDS))
def test_model_exceptions_are_500_without_internals_and_counted(eps, n, data, kind):
    ep = eps["misc"]
    before = _counts(ep.name)
    x = features(n)
    x[data.draw(st.integers(0, n - 1)), 0] = RAISE
    ctype, body = encode(x, kind)
    status, headers, message = request(ep.url, body, {"Content-Type": ctype})
    assert status == 500, message
    text = message.decode()
    assert "hunter2" not in text and "secret" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert headers["x-request-id"] in text and "request id" in text
    bad = request(ep.url, b"1,2\n", {"Content-Type": protocol.CSV})[0]
    assert bad == 400
    wait_for(lambda: (c := _counts(ep.name))["server_errors"] >= before["server_errors"] + 1 and
              c["client_errors"] >= before["client_errors"] + 1)
    healthy(ep)


def test_counts_split_client_and_server_errors(eps):
    """Fresh requests on the queue endpoint (no other test counts there concurrently): exact increments."""
    ep = eps["queue"]
    before = _counts(ep.name)
    x = features(3)
    assert request(ep.url, bytes(recordio.encode_dense(x)), {"Content-Type": protocol.RECORDIO})[0] == 200
    assert request(ep.url, b"1,2\n", {"Content-Type": protocol.CSV})[0] == 400
    x[0, 0] = RAISE
    assert request(ep.url, bytes(recordio.encode_dense(x)), {"Content-Type": protocol.RECORDIO})[0] == 500
    want = {"requests": 3, "records": 3, "errors": 2, "client_errors": 1, "server_errors": 1}
    wait_for(lambda: {k: _counts(ep.name)[k] - before[k] for k in want} == want)


def test_scoring_past_the_deadline_is_504_and_the_endpoint_stays_up(eps):
    ep = eps["misc"]
    x = features(2)
    x[0, 0], x[0, 1] = SLEEP, TIMEOUT_S + 3
    began = time.monotonic()
    status, headers, message = request(ep.url, bytes(recordio.encode_dense(x)), {"Content-Type": protocol.RECORDIO})
    took = time.monotonic() - began
    assert status == 504 and f"limit of {TIMEOUT_S:g} s".encode() in message and took < TIMEOUT_S + 2, took
    assert headers["x-request-id"].encode() in message
    healthy(ep)  # while the sleeping thread still runs


def test_sparse_input_is_scored_in_chunks_within_the_dense_bound(eps):
    """500 sparse records for a 50,000-feature torch model: as one predict call that is 100 MB dense, which the
    model refuses (past TORCH_BOUND); the endpoint hands it chunks of at most TORCH_BOUND / 2 and the scores are
    the model's."""
    from ray import serve

    ep = eps["torch"]
    rng = np.random.default_rng(5)
    x = sp.random(500, TORCH_DIM, density=3 / TORCH_DIM, format="csr", random_state=7, dtype=np.float32)
    x.data = rng.normal(size=x.nnz).astype(np.float32)
    body = bytes(recordio.encode_sparse(x))
    assert len(body) < protocol.MAX_BODY_BYTES and 500 * TORCH_DIM * 4 > 20 * TORCH_BOUND
    expected = (x @ eps["weight"].T.astype(np.float64)).ravel() + eps["bias"][0]
    for ctype, data in [(protocol.RECORDIO, body),
                        (protocol.LIBSVM, "\n".join("0 " + " ".join(f"{j}:{float(v)!r}" for j, v in
                                                                    zip(x[i].indices, x[i].data, strict=True))
                                                    for i in range(500)).encode())]:
        status, headers, data = request(ep.url, data, {"Content-Type": ctype})
        assert status == 200, data
        np.testing.assert_allclose(protocol.decode_response(data, headers["content-type"])["score"], expected,
                                   rtol=1e-4, atol=1e-5)
    info = serve.get_app_handle(ep.name).info.remote().result()
    assert info["chunk_records"] == TORCH_BOUND // 2 // (4 * TORCH_DIM) == 10
    assert request(ep.ping_url, method="GET")[0] == 200


# ---------------------------------------------------------------- overload

@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clients=st.integers(4, 8))
def test_overload_is_503_with_retry_after_then_the_endpoint_recovers(eps, clients):
    """One request at a time, one waiting: of `clients` concurrent 0.8 s requests, some are refused at once with
    503 + Retry-After (Serve's max_queued_requests), the others score; afterwards /ping is 200."""
    ep = eps["queue"]
    x = features(2)
    x[0, 0], x[0, 1] = SLEEP, 0.8
    body = bytes(recordio.encode_dense(x))
    results: list[tuple[int, dict]] = []

    def call() -> None:
        status, headers, _ = request(ep.url, body, {"Content-Type": protocol.RECORDIO})
        results.append((status, headers))

    threads = [threading.Thread(target=call) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(s for s, _ in results)
    assert len(results) == clients and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    assert all(h.get("retry-after") == "2" for s, h in results if s == 503)
    wait_for(lambda: request(ep.ping_url, method="GET")[0] == 200, timeout=30)
    healthy(ep)


# ---------------------------------------------------------------- deploy-time checks

def test_unschedulable_replicas_fail_deploy_with_the_resources_named(eps):
    from ray import serve

    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ask \{'CPU': 64\} each .* CPU free of"):
        endpoint.deploy("abuse-huge", eps["uri"], num_cpus=64, ready_timeout_s=3)
    assert time.monotonic() - began < 60
    assert endpoint.get("abuse-huge") is None and "abuse-huge" not in serve.status().applications
    healthy(eps["misc"])


@settings(max_examples=40, deadline=None)
@given(host=st.ip_addresses().map(str) | st.sampled_from(["0.0.0.0", "::", "example.com", "localhost"]))
def test_a_non_loopback_host_needs_a_token(host):
    """Checked before anything is deployed (no Ray needed)."""
    if endpoint.is_loopback(host):
        assert host == "localhost" or host.startswith("127.") or host == "::1"
        endpoint.require_token(host, None)
    else:
        with pytest.raises(ValueError, match="token"):
            endpoint.deploy("abuse-exposed", "/nonexistent/model", host=host)
    endpoint.require_token(host, "t0k")


def test_limits_are_checked_before_deploying():
    for kwargs, words in [({"max_records": 0}, "max_records"), ({"max_dense_bytes": -1}, "max_dense_bytes"),
                          ({"request_timeout_s": math.inf}, "request_timeout_s"),
                          ({"max_queued_requests": 0}, "max_queued_requests"),
                          ({"ready_timeout_s": 0}, "ready_timeout_s")]:
        with pytest.raises(ValueError, match=words):
            endpoint.deploy("abuse-limits", "/nonexistent/model", **kwargs)


def test_cli_refuses_a_token_in_argv_and_an_exposed_host_without_one(tmp_path, monkeypatch, capsys):
    from ray_backend.__main__ import main

    monkeypatch.delenv(endpoint.TOKEN_ENV, raising=False)
    assert main(["serve", "/nonexistent/model", "--token", "s3cret"]) == 2
    err = capsys.readouterr().err
    assert "--token is refused" in err and endpoint.TOKEN_ENV in err and "--token-file" in err
    assert main(["serve", "/nonexistent/model", "--host", "0.0.0.0"]) == 2
    assert "token" in capsys.readouterr().err
    assert main(["serve", "/nonexistent/model", "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read --token-file" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "/nonexistent/model", "--token-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_a_port_another_serve_shares_counts_as_taken():
    """Serve's proxies bind with SO_REUSEPORT: a second cluster's proxy on the same port would silently take part
    of the traffic, so `start` treats such a port as taken (default: another port; a given one: an error)."""
    import socket

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert endpoint._port_taken("127.0.0.1", port)
    assert not endpoint._port_taken("127.0.0.1", endpoint._free_port("127.0.0.1"))
