"""Java programs the project runs from Maven Central: fetched once, then offline.

Apache Kafka (`deploy/kafka/pom.xml`) and Apicurio Registry
(`deploy/apicurio/pom.xml`) are each declared by a pom the project owns. The
first use runs `mvn dependency:copy-dependencies` on it into
`PIPELINE_KAFKA_CACHE` (default `~/.cache/claude-pipeline`), in a directory named
by the pom's hash, so changing a pom fetches again and nothing else does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger("pipeline.dev.maven")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def cache_dir() -> Path:
    root = os.environ.get("PIPELINE_KAFKA_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "claude-pipeline"


def need(tool: str, why: str) -> str:
    """The path of `tool`, or one line saying what it is needed for."""
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(f"{why} ({tool} is not on PATH)")
    return path


def java(who: str = "the kafka engine") -> str:
    """The java to run with: $JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return need("java", f"{who} needs Java 17 or newer (apt-get install openjdk-17-jre-headless)")


def fetched(
    pom: Path,
    name: str,
    why: str,
    finish: Callable[[Path], None] = lambda directory: None,
    log_file: Path | None = None,
) -> Path:
    """The directory of `pom`'s runtime dependencies, fetched with Maven on first
    use; `finish` prepares a fresh copy (unpacks, adds config) before it is used.
    `why`: what the one-line error says Maven was needed for."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    lib = cache_dir() / f"{name}-{digest}" / "lib"
    if (lib / ".complete").exists():
        return lib
    mvn = need("mvn", f"{why} needs Maven 3 to fetch from Maven Central")
    # Several processes may fetch at once (parallel test runs): each into its
    # own directory, the first to finish wins, the others use its copy.
    partial = lib.with_name(f"lib.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    out = subprocess.run(  # noqa: S603 (Maven, our pom, our arguments)
        [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={partial}", "-DincludeScope=runtime"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if out.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        if log_file is not None:
            log_file.write_text(out.stdout + out.stderr)
        tail = (out.stdout + out.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise ConfigError(
            f"Maven could not fetch {name} from Maven Central (is it reachable?): {tail[0]}"
        )
    finish(partial)
    (partial / ".complete").write_text(f"{time.monotonic() - started:.1f} s\n")
    try:
        partial.rename(lib)
    except OSError:  # another process won: its copy is the same
        shutil.rmtree(partial, ignore_errors=True)
    log.info("fetched with Maven", extra={"dir": str(lib), "s": time.monotonic() - started})
    return lib
