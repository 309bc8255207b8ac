"""Set the release version of every distribution in the repository at once.

    python tools/set_version.py 1.0.0          # writes VERSION and every _version.py
    python tools/set_version.py --check        # exit 1 if any copy disagrees with VERSION

VERSION at the repository root is the one source; each distribution reads its version from its
own `_version.py` (so an sdist builds alone), and the meta-package's extras pin
`bitsandbytes-<platform>==<version>` through a template of its own version.

The distributions are found, not listed: meta/ and every platforms/*/pyproject.toml (a platform
added later is covered by the same glob); the file each reads its version from is the `input`
of its [tool.scikit-build.metadata.version] table. A pyproject that sets a static version, or
reads it from anywhere else, is reported as a disagreement.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = "# Written by tools/set_version.py from the repository's VERSION file; do not edit by hand.\n"
VERSION_RE = re.compile(r'^__version__ = "([^"]+)"$', re.M)
PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


SECTION_RE = re.compile(r"^\[tool\.scikit-build\.metadata\.version\]\s*$(?P<body>.*?)(?=^\[|\Z)", re.M | re.S)
INPUT_RE = re.compile(r'^input\s*=\s*"([^"]+)"', re.M)


def pyprojects(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The pyproject.toml of every distribution: the meta-package and each platform wheel."""
    return [root / "meta" / "pyproject.toml", *sorted((root / "platforms").glob("*/pyproject.toml"))]


def version_file(pyproject: pathlib.Path) -> pathlib.Path | None:
    """The _version.py a distribution reads its version from, or None when it reads it elsewhere."""
    text = pyproject.read_text()
    section = SECTION_RE.search(text)
    match = INPUT_RE.search(section.group("body")) if section else None
    if not match or not match.group(1).endswith("_version.py") or re.search(r"^version\s*=", text, re.M):
        return None
    return pyproject.parent / match.group(1)


def version_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Every _version.py of a distribution."""
    return [f for f in map(version_file, pyprojects(root)) if f is not None]


def read_versions(root: pathlib.Path = ROOT) -> dict[str, str]:
    """Path (relative) -> version found in it (VERSION, then each distribution's file)."""
    found = {"VERSION": (root / "VERSION").read_text().strip()}
    for pyproject in pyprojects(root):
        f = version_file(pyproject)
        if f is None:
            found[str(pyproject.relative_to(root))] = "<not read from a _version.py by the regex provider>"
            continue
        m = VERSION_RE.search(f.read_text()) if f.exists() else None
        found[str(f.relative_to(root))] = m.group(1) if m else "<missing>"
    return found


def set_version(version: str, root: pathlib.Path = ROOT) -> None:
    """Write ``version`` to VERSION and every _version.py."""
    if not PEP440.match(version):
        raise SystemExit(f"set_version: {version!r} is not a PEP 440 release version")
    (root / "VERSION").write_text(version + "\n")
    for f in version_files(root):
        f.write_text(HEADER + f'__version__ = "{version}"\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", nargs="?", help="the new version, e.g. 1.0.0")
    parser.add_argument("--check", action="store_true", help="only check that every copy agrees")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.version:
        set_version(args.version, args.root)
    versions = read_versions(args.root)
    wrong = {k: v for k, v in versions.items() if v != versions["VERSION"]}
    for k, v in wrong.items():
        print(f"{k}: {v} (VERSION says {versions['VERSION']})", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
