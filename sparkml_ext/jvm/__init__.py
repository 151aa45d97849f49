"""The JVM half of the staging encoder (`RecordIOEncoder.java`, shipped as source): compiled once per source and Spark
version into a cached jar (no build tool, no committed binary: one `javac` of one file against the Spark jars), then
loaded into a running SparkSession: `addJar` for the executors, a class loader of our own on the driver (py4j resolves
classes through the classpath the JVM started with, which a jar added later is not on). Everything here returns None
instead of raising where the JVM path is unavailable (no javac and no cached jar, no driver JVM under Spark Connect,
a failed compile or load): staging then encodes in Python."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

SOURCE = Path(__file__).with_name("RecordIOEncoder.java")
CLASS = "sparkmlext.RecordIOEncoder"
CACHE_ENV = "SPARKML_EXT_JVM_CACHE"  # where built jars go (default: $XDG_CACHE_HOME or ~/.cache, /sparkml-ext/jvm)
SWITCH_ENV = "SPARKML_EXT_JVM_ENCODER"  # "0": never use the JVM encoder
_CLASSPATH_PREFIXES = ("spark-core_", "spark-catalyst_", "spark-sql-api_", "spark-unsafe_", "spark-common-utils",
                       "scala-library", "kryo")
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # application id -> the encode Method (py4j), or None after a failed load


def enabled() -> bool:
    """Whether the JVM encoder may be used ($SPARKML_EXT_JVM_ENCODER=0 turns it off)."""
    return os.environ.get(SWITCH_ENV, "1") != "0"


def spark_jars_dir() -> Path | None:
    """The Spark jars the driver JVM runs on: $SPARK_HOME/jars, else pyspark's own."""
    home = os.environ.get("SPARK_HOME")
    if home and (Path(home) / "jars").is_dir():
        return Path(home) / "jars"
    try:
        import pyspark
    except ImportError:
        return None
    jars = Path(pyspark.__file__).parent / "jars"
    return jars if jars.is_dir() else None


def cache_dir() -> Path:
    """The directory built jars are kept in."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparkml-ext" / "jvm"


def jar_path(jars: Path) -> Path:
    """The jar for this source compiled against these Spark jars (their names carry Spark's version)."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for name in sorted(p.name for p in jars.glob("spark-*.jar")):
        h.update(name.encode())
    return cache_dir() / f"sparkml-ext-encoder-{h.hexdigest()[:16]}.jar"


def find_javac() -> str | None:
    """$JAVA_HOME/bin/javac, else javac on the PATH; None without a JDK."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "javac"), os.X_OK):
        return os.path.join(home, "bin", "javac")
    return shutil.which("javac")


def build_jar(jars: Path | None = None) -> Path | None:
    """The encoder's jar, compiled now if it is not cached yet (a few seconds, once); None without javac or Spark's
    jars, or when compiling fails (logged)."""
    jars = jars or spark_jars_dir()
    if jars is None:
        return None
    target = jar_path(jars)
    if target.is_file():
        return target
    javac = find_javac()
    if javac is None:
        return None
    needed = [str(p) for p in sorted(jars.glob("*.jar")) if p.name.startswith(_CLASSPATH_PREFIXES)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparkml-ext-javac-") as tmp:
        for classpath in (os.pathsep.join(needed), str(jars / "*")):  # the few jars it needs, else all of Spark's
            proc = subprocess.run([javac, "--release", "11", "-nowarn", "-cp", classpath, "-d", tmp, str(SOURCE)],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                break
        else:
            _log.warning("compiling the JVM staging encoder failed; staging encodes in Python:\n%s",
                         proc.stderr[-2000:])
            return None
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as jar:
            jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: sparkml-ext\n\n")
            for cls in sorted(Path(tmp).rglob("*.class")):
                jar.write(cls, cls.relative_to(tmp).as_posix())
        os.replace(partial, target)  # atomic: concurrent builders each publish a complete jar
    return target


def encode_method(spark):
    """The py4j handle of `RecordIOEncoder.encode` in `spark`'s driver JVM, the jar added for its executors; None where
    unavailable (Spark Connect, no jar, a load failure: logged once per application)."""
    if not enabled() or getattr(spark, "_jsparkSession", None) is None:
        return None
    sc = spark.sparkContext
    app = sc.applicationId
    with _lock:
        if app in _loaded:
            return _loaded[app]
        method = None
        try:
            jar = build_jar()
            if jar is not None:
                method = _load(sc, jar)
        except Exception as exc:  # noqa: BLE001 (any failure: the Python encoder takes over)
            _log.warning("the JVM staging encoder could not be loaded; staging encodes in Python: %s", exc)
        _loaded[app] = method
        return method


def _load(sc, jar: Path):
    jvm, gateway = sc._jvm, sc._gateway
    if not any(j.endswith("/" + jar.name) for j in sc._jsc.sc().listJars().mkString("\n").splitlines()):
        sc._jsc.sc().addJar(str(jar))  # executors (the driver's own in local mode) fetch it before their next task
    urls = gateway.new_array(jvm.java.net.URL, 1)
    urls[0] = jvm.java.io.File(str(jar)).toURI().toURL()
    loader = jvm.java.net.URLClassLoader(urls, jvm.java.lang.Thread.currentThread().getContextClassLoader())
    cls = loader.loadClass(CLASS)
    for method in cls.getMethods():
        if method.getName() == "encode":
            return method
    raise RuntimeError(f"{CLASS} has no encode method")


def encode(spark, jrdd, config: str):
    """Call the loaded `RecordIOEncoder.encode(rows, config)`; the JavaRDD of chunk and stats rows."""
    method = encode_method(spark)
    gateway = spark.sparkContext._gateway
    args = gateway.new_array(spark.sparkContext._jvm.java.lang.Object, 2)
    args[0], args[1] = jrdd, config
    return method.invoke(None, args)


def is_missing_class(exc: BaseException) -> bool:
    """Whether a failed Spark job failed because executors could not load the encoder's classes (the jar did not
    reach them)."""
    text = str(exc)
    return CLASS.split(".")[0] + "." in text and ("ClassNotFoundException" in text or "NoClassDefFoundError" in text)


def mark_unavailable(spark, exc: BaseException) -> None:
    """Stop using the JVM encoder in this application (logged once): its executors cannot load it."""
    _log.warning("executors could not load the JVM staging encoder; staging encodes in Python from now on: %s",
                 str(exc)[:500])
    with _lock:
        _loaded[spark.sparkContext.applicationId] = None
