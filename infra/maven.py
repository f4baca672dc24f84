"""Jars from Maven Central into a cache outside git: the broker's and Kafka Connect's."""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["fetch_jars"]

log = logging.getLogger(__name__)


def fetch_jars(pom: Path, dest: Path, properties: Mapping[str, str], *, profile: str | None = None,
               exclude_groups: Iterable[str] = (), error: type[Exception] = RuntimeError) -> Path:
    """Copy the runtime dependencies of `pom` (and `profile`) into `dest` unless a completed copy is there.

    The copy goes to a sibling folder first and is renamed into place, so an interrupted fetch is
    never taken for a complete one; `error` is the caller's exception for a failure."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    if not shutil.which("mvn"):
        raise error(f"Maven (mvn) is needed to fetch the jars of {pom}")
    tmp = dest.with_name(f"{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(pom), *([f"-P{profile}"] if profile else []), "dependency:copy-dependencies",
        *(f"-D{name}={value}" for name, value in properties.items()), "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}", *([f"-DexcludeGroupIds={','.join(exclude_groups)}"] if exclude_groups else []),
    ]
    log.info("fetching %s jars with Maven (%s)", profile or pom.parent.name, ", ".join(properties.values()))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise error(f"mvn failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    marker.touch()
    return dest
