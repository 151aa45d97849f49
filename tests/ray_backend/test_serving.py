"""Hosted endpoints on Ray Serve: the SageMaker container protocol over real HTTP on the session's Ray cluster —
every request type, SageMaker-readable responses, 4xx (never 5xx) for bad input, auth, weighted variants, the CLI."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recordio
from ray_backend.errors import ArtifactError
from ray_backend.predictor import load_predictor
from ray_backend.serving import endpoint, protocol
from tests.ray_backend.helpers import linear_artifact, wait_for

REPO = __file__.rsplit("/tests/", 1)[0]
DIM = 6


def post(url: str, body: bytes, headers: dict | None = None, method: str = "POST") -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, parts.path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def features(n: int = 20, seed: int = 2, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    x[x < -0.5] = 0
    return x


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """One endpoint (no auth) and one with a bearer token; deleted at module end."""
    base = tmp_path_factory.mktemp("serving")
    uri = linear_artifact(base / "a" / "model")
    open_ep = endpoint.deploy("serving-open", uri, port=0)
    auth_ep = endpoint.deploy("serving-auth", uri, token="s3cret", port=None)
    try:
        yield {"open": open_ep, "auth": auth_ep, "uri": uri, "predictor": load_predictor(uri, cache=False),
               "base": base}
    finally:
        for name in ("serving-open", "serving-auth"):
            endpoint.delete(name)


def _healthy(ep) -> None:
    status, _, _ = post(ep.ping_url, b"", method="GET")
    assert status == 200
    x = features(3)
    status, _, body = post(ep.url, bytes(recordio.encode_dense(x)), {"Content-Type": protocol.RECORDIO})
    assert status == 200 and protocol.decode_outputs(body)["score"].shape == (3,)


def test_every_request_type_scores_like_the_predictor(served):
    ep, predictor = served["open"], served["predictor"]
    x = features()
    expected = predictor.predict(x)
    csr = sp.csr_matrix(x)
    libsvm = "\n".join("1 " + " ".join(f"{j}:{float(x[i, j])!r}" for j in csr[i].indices) for i in range(len(x)))
    sparse_json = {"instances": [{"data": {"features": {"keys": csr[i].indices.tolist(), "shape": [DIM],
                                                        "values": csr[i].data.tolist()}}} for i in range(len(x))]}
    bodies = {
        "dense recordio": (protocol.RECORDIO, bytes(recordio.encode_dense(x))),
        "sparse recordio": (protocol.RECORDIO, bytes(recordio.encode_sparse(csr))),
        "csv": (protocol.CSV, "\n".join(",".join(repr(float(v)) for v in row) for row in x).encode()),
        "json": (protocol.JSON, json.dumps({"instances": [{"features": row.tolist()} for row in x]}).encode()),
        "sparse json": (protocol.JSON, json.dumps(sparse_json).encode()),
        "libsvm": (protocol.LIBSVM, libsvm.encode()),
    }
    for what, (ctype, body) in bodies.items():
        for accept in (protocol.RECORDIO, protocol.JSON):
            status, headers, data = post(ep.url, body, {"Content-Type": ctype, "Accept": accept})
            assert status == 200, (what, data)
            assert headers["content-type"].startswith(accept)
            got = protocol.decode_response(data, headers["content-type"])
            np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6, err_msg=what)
            np.testing.assert_array_equal(got["predicted_label"], expected["predicted_label"])


def test_responses_read_like_a_sagemaker_builtin_endpoint(served):
    """RecordIO responses: one Record per input with label['score'] / label['predicted_label'] float32 tensors;
    JSON: {"predictions": [{"score": s, "predicted_label": 0|1}]} — what SageMaker clients parse."""
    ep, predictor = served["open"], served["predictor"]
    x = features(7)
    expected = predictor.predict(x)
    _, _, body = post(ep.url, bytes(recordio.encode_dense(x)), {"Content-Type": protocol.RECORDIO})
    records = recordio.read_records(io.BytesIO(body))
    assert len(records) == 7
    for rec, score, label in zip(records, expected["score"], expected["predicted_label"], strict=True):
        assert rec.label["score"].float32_tensor.values[0] == pytest.approx(float(score), rel=1e-7)
        assert rec.label["predicted_label"].float32_tensor.values[0] == float(label)
    _, _, body = post(ep.url, bytes(recordio.encode_dense(x)),
                      {"Content-Type": protocol.RECORDIO, "Accept": protocol.JSON})
    rows = json.loads(body)["predictions"]
    assert [r["predicted_label"] for r in rows] == expected["predicted_label"].astype(int).tolist()
    assert all(isinstance(r["predicted_label"], int) for r in rows)


def test_bad_input_gets_a_4xx_with_a_message(served):
    ep = served["open"]
    x5 = features(4, dim=5)
    cases = [
        ("recordio dim", 400, {"Content-Type": protocol.RECORDIO}, bytes(recordio.encode_dense(x5)), "expects 6"),
        ("csv dim", 400, {"Content-Type": protocol.CSV}, b"1,2,3,4,5\n", "got 5"),
        ("json dim", 400, {"Content-Type": protocol.JSON}, b'{"instances": [{"features": [1, 2]}]}', "got 2"),
        ("libsvm index", 400, {"Content-Type": protocol.LIBSVM}, b"0 9:1.0\n", "expects 6"),
        ("csv text", 400, {"Content-Type": protocol.CSV}, b"a,b,c,d,e,f\n", "csv"),
        ("json syntax", 400, {"Content-Type": protocol.JSON}, b"{not json", "json"),
        ("empty", 400, {"Content-Type": protocol.RECORDIO}, b"", "empty"),
        ("content type", 415, {"Content-Type": "image/png"}, b"\x89PNG", "not supported"),
        ("accept", 406, {"Content-Type": protocol.CSV, "Accept": "text/html"}, b"1,2,3,4,5,6\n", "accept"),
        ("auth on open endpoint is ignored", 200, {"Content-Type": protocol.CSV, "Authorization": "Bearer x"},
         b"1,2,3,4,5,6\n", ""),
    ]
    for what, want, headers, body, words in cases:
        status, _, data = post(ep.url, body, headers)
        assert status == want, (what, status, data)
        assert words.lower() in data.decode().lower(), (what, data)
    status, _, data = post(ep.url, b"", method="GET")
    assert status == 405
    status, _, _ = post(ep.url.replace("/invocations", "/nope"), b"x")
    assert status == 404
    huge = b"0" * (protocol.MAX_BODY_BYTES + 1)
    status, _, data = post(ep.url, huge, {"Content-Type": protocol.CSV})
    assert status == 413 and b"limit" in data
    _healthy(ep)


def test_bearer_token(served):
    ep = served["auth"]
    body, headers = b"1,2,3,4,5,6\n", {"Content-Type": protocol.CSV}
    assert ep.auth
    assert post(ep.url, body, headers)[0] == 401
    status, got, _ = post(ep.url, body, {**headers, "Authorization": "Bearer wrong"})
    assert status == 401 and got["www-authenticate"] == "Bearer"
    assert post(ep.url, body, {**headers, "Authorization": "Bearer s3cret"})[0] == 200
    assert post(ep.ping_url, b"", method="GET")[0] == 200  # health checks need no token


_TYPES = [protocol.RECORDIO, protocol.CSV, protocol.JSON, protocol.LIBSVM, "application/octet-stream", "", "text/x"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["random", "truncated", "wrong dim", "bit flip"]), data=st.binary(max_size=300),
       ctype=st.sampled_from(_TYPES), cut=st.integers(1, 400), n=st.integers(1, 5))
def test_fuzzed_bodies_get_4xx_and_the_endpoint_stays_healthy(served, kind, data, ctype, cut, n):
    ep = served["open"]
    valid = bytes(recordio.encode_dense(features(n)))
    if kind == "random":
        body = data
    elif kind == "truncated":
        body, ctype = valid[:min(cut, len(valid) - 1)], protocol.RECORDIO
    elif kind == "wrong dim":
        body, ctype = bytes(recordio.encode_dense(features(n, dim=1 + cut % 12))), protocol.RECORDIO
        if 1 + cut % 12 == DIM:
            body = valid[:-1]
    else:
        flipped = bytearray(valid)
        flipped[cut % len(valid)] ^= 0xFF
        body, ctype = bytes(flipped), protocol.RECORDIO
    headers = {"Content-Type": ctype} if ctype else {}
    status, _, message = post(ep.url, body, headers)
    # A flipped data byte can still be a valid record; anything else must be refused with a message.
    assert status < 500, (kind, status, message)
    if kind != "bit flip":
        assert 400 <= status < 500 and message.strip(), (kind, ctype, status, message)


def test_fuzzing_left_the_endpoint_healthy(served):
    _healthy(served["open"])
    assert post(served["open"].url, b"0" * (protocol.MAX_BODY_BYTES + 10), {"Content-Type": protocol.CSV})[0] == 413
    _healthy(served["open"])


def test_weighted_variants_split_traffic_and_count_it(served):
    base = served["base"]
    a = linear_artifact(base / "va" / "model", seed=11)
    b = linear_artifact(base / "vb" / "model", seed=12)
    pa, pb = load_predictor(a, cache=False), load_predictor(b, cache=False)
    ep = endpoint.deploy("serving-ab", variants=[endpoint.Variant("A", a, 0.8), endpoint.Variant("B", b, 0.2)])
    try:
        x = features(5)
        body = bytes(recordio.encode_dense(x))
        seen = {"A": 0, "B": 0}
        for _ in range(150):
            status, headers, data = post(ep.url, body, {"Content-Type": protocol.RECORDIO})
            assert status == 200
            variant = headers[protocol_header()]
            seen[variant] += 1
            expected = (pa if variant == "A" else pb).predict(x)["score"]
            np.testing.assert_allclose(protocol.decode_outputs(data)["score"], expected, rtol=1e-6)
        assert 90 <= seen["A"] <= 140 and seen["A"] + seen["B"] == 150, seen  # 80/20 of 150: A ~ 120 +- 5
        for _ in range(5):
            status, headers, _ = post(ep.url, body, {"Content-Type": protocol.RECORDIO,
                                                     "X-Amzn-SageMaker-Target-Variant": "B"})
            assert status == 200 and headers[protocol_header()] == "B"
        status, _, message = post(ep.url, body, {"Content-Type": protocol.RECORDIO,
                                                 "X-Amzn-SageMaker-Target-Variant": "C"})
        assert status == 400 and b"'C'" in message
        want = {"A": seen["A"], "B": seen["B"] + 5}
        counts = wait_for(lambda: (c := endpoint.variant_counts("serving-ab")) and
                           {k: v["requests"] for k, v in c.items()} == want and c)
        assert counts["A"]["records"] == 5 * want["A"] and counts["B"]["errors"] == 0
    finally:
        endpoint.delete("serving-ab")


def protocol_header() -> str:
    from ray_backend.serving.app import VARIANT_HEADER

    return VARIANT_HEADER.lower()


def test_endpoints_by_name(served, tmp_path):
    names = [e.name for e in endpoint.list_endpoints()]
    assert {"serving-open", "serving-auth"} <= set(names)
    found = endpoint.get("serving-open")
    assert found.url == served["open"].url and found.status == "RUNNING" and found.feature_dim == DIM
    assert endpoint.get("serving-missing") is None
    with pytest.raises(ValueError, match="already exists"):
        endpoint.deploy("serving-open", served["uri"])
    with pytest.raises(ValueError, match="endpoint name"):
        endpoint.deploy("bad_name!", served["uri"])
    with pytest.raises(ArtifactError, match="missing"):
        endpoint.deploy("serving-nothing", str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="weight"):
        endpoint.deploy("serving-w", variants=[endpoint.Variant("A", served["uri"], 0)])
    assert endpoint.get("serving-nothing") is None
    assert endpoint.delete("serving-missing") is False


def test_two_replicas_answer_from_distinct_processes(served):
    from ray import serve

    endpoint.deploy("serving-two", served["uri"], replicas=2)
    try:
        handle = serve.get_app_handle("serving-two")
        pids = wait_for(lambda: len(p := {handle.info.remote().result()["pid"] for _ in range(20)}) == 2 and p)
        assert len(pids) == 2
        assert serve.status().applications["serving-two"].deployments["variant-AllTraffic"].status == "HEALTHY"
    finally:
        endpoint.delete("serving-two")


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(served):
    """Serve's autoscaler, through our autoscaling config: 12 clients sending 4,000-record requests keep more than
    one request per replica in flight, so a second replica starts; once they stop, it is removed."""
    from ray import serve

    auto = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "metrics_interval_s": 0.2,
            "look_back_period_s": 1.0, "upscale_delay_s": 0.0, "downscale_delay_s": 1.0}
    ep = endpoint.deploy("serving-auto", served["uri"], autoscaling=auto)

    def running() -> int:
        app = serve.status().applications["serving-auto"]
        return app.deployments["variant-AllTraffic"].replica_states.get("RUNNING", 0)

    body = bytes(recordio.encode_dense(features(4000)))
    stop, answers = threading.Event(), []

    def client() -> None:
        while not stop.is_set():
            answers.append(post(ep.url, body, {"Content-Type": protocol.RECORDIO})[0])

    clients = [threading.Thread(target=client, daemon=True) for _ in range(12)]
    try:
        assert running() == 1
        for c in clients:
            c.start()
        wait_for(lambda: running() == 2, timeout=90)
        stop.set()
        for c in clients:
            c.join(timeout=60)
        assert answers and set(answers) <= {200, 503}  # 503: backpressure while the replica starts, never lost
        assert answers.count(200) > len(answers) // 2
        wait_for(lambda: running() == 1, timeout=90)
        _healthy(ep)
    finally:
        stop.set()
        endpoint.delete("serving-auto")


# ---------------------------------------------------------------- protocol (no Ray)

def test_response_codec_round_trips_scalars_vectors_and_float64():
    rng = np.random.default_rng(0)
    outputs = {"score": rng.random(9).astype(np.float32), "predicted_label": np.arange(9) % 3,
               "projection": rng.random((9, 3)), "one_wide": rng.random((9, 1)).astype(np.float32)}
    names = list(outputs)
    got = protocol.decode_outputs(protocol.encode_outputs(outputs, names))
    assert got["score"].dtype == np.float32 and np.array_equal(got["score"], outputs["score"])
    assert np.array_equal(got["predicted_label"], outputs["predicted_label"].astype(np.float32))
    assert got["projection"].dtype == np.float64 and np.array_equal(got["projection"], outputs["projection"])
    assert got["one_wide"].shape == (9, 1)  # a 1-wide vector stays a vector (shape=[1] in its tensor)
    # the protobuf path (any field order, as another server might write) reads the same values
    payloads = []
    for i in range(9):
        rec = recordio.Record()
        for k in reversed(names):
            t = rec.label[k].float64_tensor
            t.values.extend(np.atleast_1d(outputs[k][i]).astype(float).tolist())
            if np.ndim(outputs[k]) == 2:
                t.shape.append(np.shape(outputs[k])[1])
        payloads.append(rec.SerializeToString())
    from recordio.framing import frame

    slow = protocol.decode_outputs(b"".join(frame(p) for p in payloads))
    for k in names:
        np.testing.assert_allclose(slow[k], got[k], rtol=1e-6)
        assert slow[k].shape == got[k].shape


def test_json_shapes_follow_sagemaker():
    pca = json.loads(protocol.encode_json({"projection": np.ones((2, 3))}, ["projection"]))
    assert pca == {"projections": [{"projection": [1.0, 1.0, 1.0]}] * 2}
    km = json.loads(protocol.encode_json({"closest_cluster": np.array([3.0, 1.0], np.float32),
                                          "distance_to_cluster": np.array([1.5, 0.25], np.float32)},
                                         ["closest_cluster", "distance_to_cluster"]))
    assert km == {"predictions": [{"closest_cluster": 3, "distance_to_cluster": 1.5},
                                  {"closest_cluster": 1, "distance_to_cluster": 0.25}]}


# ---------------------------------------------------------------- the CLI

def _self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (PEM files), made with openssl."""
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.slow
def test_cli_serves_until_interrupted_and_exits_cleanly(tmp_path):
    """The token from --token-file, HTTPS through Serve's own TLS options, --max-records; SIGINT stops it."""
    import ssl

    uri = linear_artifact(tmp_path / "m" / "model")
    port = endpoint._free_port("127.0.0.1")
    cert, key = _self_signed(tmp_path)
    (tmp_path / "token").write_text("t0k\n")
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""}
    env.pop(endpoint.TOKEN_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "ray_backend", "serve", uri, "--port", str(port),
                             "--token-file", str(tmp_path / "token"), "--max-records", "5", "--ssl-certfile", cert,
                             "--ssl-keyfile", key], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    context = ssl.create_default_context(cafile=cert)

    def call(path: str, body: bytes = b"", headers: dict | None = None, method: str = "POST"):
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    try:
        def up():
            try:
                return call("/ping", method="GET")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=240)
        x = features(4)
        assert call("/invocations", bytes(recordio.encode_dense(x)))[0] == 401
        status, body = call("/invocations", bytes(recordio.encode_dense(x)), {"Authorization": "Bearer t0k"})
        assert status == 200
        np.testing.assert_allclose(protocol.decode_outputs(body)["score"],
                                   load_predictor(uri, cache=False).predict(x)["score"], rtol=1e-6)
        status, body = call("/invocations", bytes(recordio.encode_dense(features(6))), {"Authorization": "Bearer t0k"})
        assert status == 413 and b"more than 5 records" in body
        with pytest.raises(OSError):  # plain HTTP to the TLS port
            post(f"http://127.0.0.1:{port}/ping", b"", method="GET")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert f"https://127.0.0.1:{port}/invocations" in out and "stopped" in out
        with pytest.raises(OSError):
            call("/ping", method="GET")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
