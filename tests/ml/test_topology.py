"""Set-ups that only work on one machine fail (or warn) before any work when Spark runs on a cluster. The session's
Spark is local, so these tests make the estimator see a cluster master; tests/cluster runs them on a real one."""

from __future__ import annotations

import warnings

import pytest

from sparkml_ext.ml import topology
from sparkml_ext.ml.estimator import RayEstimator, RayModel

CLUSTER = "spark://master:7077"
HP = {"predictor_type": "binary_classifier", "epochs": 2, "mini_batch_size": 32}


@pytest.mark.parametrize("master, single", [("local", True), ("local[*]", True), ("local-cluster[2,1,1024]", True),
                                            (None, True), ("spark://m:7077", False), ("yarn", False),
                                            ("k8s://https://api:6443", False)])
def test_single_host_masters(master, single):
    assert topology.is_single_host(master) is single


@pytest.mark.parametrize("uri", ["", "/data/staging", "file:///data/staging", "relative/dir"])
def test_local_storage_is_refused_on_a_cluster_naming_the_param(uri):
    with pytest.raises(ValueError, match=r"stagingUri .*Spark runs on a cluster \(master 'spark://master:7077'\)"):
        topology.check_fit(uri, "", "spark", CLUSTER)
    topology.check_fit(uri, "", "spark", "local[2]")  # one machine: fine


def test_shared_storage_passes_and_a_local_output_uri_is_refused(monkeypatch):
    topology.check_fit("s3://bucket/staging", "", "spark", CLUSTER)
    topology.check_fit("hdfs://nn:8020/staging", "s3://bucket/models", "auto", CLUSTER)
    with pytest.raises(ValueError, match="outputUri '/models' is a path on the local disk"):
        topology.check_fit("s3://bucket/staging", "/models", "auto", CLUSTER)
    monkeypatch.setenv(topology.SHARED_FS_ENV, "1")  # an NFS/EFS mount on every host
    topology.check_fit("/mnt/efs/staging", "/mnt/efs/models", "auto", CLUSTER)


def test_ray_local_on_a_cluster_warns_and_other_addresses_do_not():
    with pytest.warns(UserWarning, match=r"rayAddress='local' trains on an embedded Ray on the driver alone"):
        topology.check_fit("s3://b/s", "", "local", CLUSTER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for address in ("spark", "auto", "ray://head:10001"):
            topology.check_fit("s3://b/s", "", address, CLUSTER)
        topology.check_fit("", "", "local", "local[2]")


@pytest.mark.parametrize("host, refused", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("10.0.0.5", False), ("0.0.0.0", False), ("head.internal", False)])
def test_loopback_endpoints_are_refused_on_a_cluster(host, refused):
    topology.check_endpoint("endpointUrl", host, "local[2]")
    if refused:
        with pytest.raises(ValueError, match=r"endpointUrl is on loopback .* executors call the endpoint from other"):
            topology.check_endpoint("endpointUrl", host, CLUSTER)
    else:
        topology.check_endpoint("endpointUrl", host, CLUSTER)


@pytest.fixture
def on_a_cluster(monkeypatch):
    """The session's (local) Spark seen by the estimator as a cluster's driver."""
    monkeypatch.setattr(topology, "spark_master", lambda spark: CLUSTER)


def test_fit_with_a_local_staging_dir_on_a_cluster_fails_before_any_spark_job(spark, cancer_vectors, tmp_path,
                                                                               on_a_cluster):
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("topology-check", "must stay empty")
    try:
        for staging in ("", str(tmp_path)):
            est = RayEstimator(algorithm="linear-sgd", hyperparameters=HP, stagingUri=staging)
            with pytest.raises(ValueError, match="stagingUri .*Set stagingUri to storage every host reaches"):
                est.fit(cancer_vectors)
        assert tracker.getJobIdsForGroup("topology-check") == []
        assert list(tmp_path.iterdir()) == []
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)


def test_fit_with_ray_local_on_a_cluster_warns_and_still_trains(cancer_vectors, ray_local, tmp_path, on_a_cluster,
                                                                monkeypatch):
    monkeypatch.setenv(topology.SHARED_FS_ENV, "1")
    est = RayEstimator(algorithm="linear-sgd", hyperparameters=HP, stagingUri=str(tmp_path), rayAddress="local",
                       showProgress=False)
    with pytest.warns(UserWarning, match="rayAddress='local'"):
        model = est.fit(cancer_vectors)
    assert model.transform(cancer_vectors).count() == cancer_vectors.count()


def test_transform_through_a_loopback_endpoint_url_on_a_cluster_fails_before_any_request(
        spark, cancer_vectors, ray_local, tmp_path, on_a_cluster, monkeypatch):
    monkeypatch.setenv(topology.SHARED_FS_ENV, "1")
    est = RayEstimator(algorithm="linear-sgd", hyperparameters=HP, stagingUri=str(tmp_path), rayAddress="auto",
                       showProgress=False)
    model: RayModel = est.fit(cancer_vectors)
    model.setEndpointUrl("http://127.0.0.1:9/invocations")  # nothing listens there: a request would fail otherwise
    with pytest.raises(ValueError, match=r"endpointUrl 'http://127.0.0.1:9/invocations' is on loopback"):
        model.transform(cancer_vectors)
    model.setEndpointUrl("").setEndpointName("topology-check").setEndpointCreationPolicy("CREATE_ON_TRANSFORM")
    with pytest.raises(ValueError, match=r"endpointHost of endpoint 'topology-check' is on loopback"):
        model.transform(cancer_vectors)
    from ray_backend.serving import endpoint

    assert endpoint.get("topology-check") is None  # refused before it was deployed


def test_in_cluster_python_scoring_of_a_model_on_the_driver_disk_is_refused_on_a_cluster(
        cancer_vectors, ray_local, tmp_path, on_a_cluster, monkeypatch):
    monkeypatch.setenv(topology.SHARED_FS_ENV, "1")
    model = RayEstimator(algorithm="linear-sgd", hyperparameters=HP, stagingUri=str(tmp_path), rayAddress="auto",
                         showProgress=False).fit(cancer_vectors)
    monkeypatch.delenv(topology.SHARED_FS_ENV)
    assert model.transform(cancer_vectors).count() == cancer_vectors.count()  # Spark ML's JVM model: driver reads
    model.setNativeScoring(False)  # every executor would load the artifact from the driver's disk
    with pytest.raises(ValueError, match=r"artifactUri '.*' is a path on the local disk.*Save the model to storage"):
        model.transform(cancer_vectors)
