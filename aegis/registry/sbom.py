"""A CycloneDX SBOM of the Python environment that built a release, cached per environment.

``cyclonedx-py environment`` takes seconds, and the environment rarely
changes between releases, so the SBOM is cached under a key derived from
the sorted list of installed distributions (``name==version``). The SBOM
is evidence signed into the release; it is not part of the model digest.

The tool writes it with ``--no-validate`` and this module checks it against
the CycloneDX JSON schema of its ``specVersion`` instead: the tool's own check
took 31 of its 33 s here, nearly all in the IRI format checks' grammar
(rfc3987-syntax). In an Aegis process that grammar is not loaded (see
``aegis/__init__.py``), so the schema and every other format are checked
in 0.6 s; a document that does not validate is never cached or signed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from aegis.errors import ConfigError
from aegis.fileutil import atomic_write, file_lock

SBOM_NAME = "sbom.cdx.json"
CACHE_ENV = "AEGIS_CACHE_DIR"


def cache_dir() -> Path:
    """``$AEGIS_CACHE_DIR/sbom``, or ``~/.cache/aegis/sbom``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "aegis"
    return root / "sbom"


def environment_key() -> str:
    """SHA-256 of the sorted ``name==version`` list of installed distributions."""
    names = sorted(
        {f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()}
    )
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def is_sbom(path: Path) -> bool:
    """True if ``path`` is a regular file holding a CycloneDX JSON document.

    A cached file that is not (truncated, corrupt, or planted) is regenerated
    rather than signed into a release.
    """
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("bomFormat") == "CycloneDX"


def environment_sbom() -> Path:
    """Returns the cached SBOM of this environment, generating it on first use.

    A cached file that does not parse as a CycloneDX JSON document is
    replaced by a fresh one.

    Raises:
        ConfigError: ``cyclonedx-py`` is missing or failed.
    """
    path = cache_dir() / f"{environment_key()}.cdx.json"
    if is_sbom(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):  # one generator per environment at a time
        if is_sbom(path):
            return path
        tool = Path(sys.executable).parent / "cyclonedx-py"
        if not tool.exists():
            raise ConfigError("cyclonedx-py is not installed (pip install cyclonedx-bom)")
        proc = subprocess.run(
            [
                str(tool),
                "environment",
                "--output-reproducible",
                "--of",
                "JSON",
                "-o",
                "-",
                "--no-validate",
                sys.executable,
            ],
            capture_output=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if proc.returncode != 0 or not proc.stdout.strip():
            detail = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[
                -1
            ]
            raise ConfigError(f"cyclonedx-py environment failed: {detail}")
        try:
            generated = json.loads(proc.stdout)
        except ValueError:
            generated = None
        if not isinstance(generated, dict) or generated.get("bomFormat") != "CycloneDX":
            raise ConfigError("cyclonedx-py environment did not write a CycloneDX JSON SBOM")
        schema_check(generated)
        atomic_write(path, proc.stdout)
    return path


def schema_check(document: dict) -> None:
    """Checks a parsed CycloneDX JSON document against the schema of its ``specVersion``.

    Raises:
        ConfigError: An unknown spec version, or the first schema error.
    """
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    spec_version = str(document.get("specVersion"))
    try:
        version = SchemaVersion.from_version(spec_version)
    except ValueError:
        raise ConfigError(
            f"the SBOM's specVersion {spec_version!r} is not one CycloneDX knows"
        ) from None
    # the parsed document again as text: json.loads took any UTF encoding, str is one
    error = JsonStrictValidator(version).validate_str(json.dumps(document))
    if error is not None:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"cyclonedx-py environment wrote an SBOM its schema refuses: {first}")
