"""Set the release version of every distribution in the repository at once.

    python tools/set_version.py 1.0.0          # writes VERSION and every _version.py
    python tools/set_version.py --check        # exit 1 if any copy disagrees with VERSION

VERSION at the repository root is the one source; each distribution reads its version from its
own `_version.py` (so an sdist builds alone), and the meta-package's extras pin
`bitsandbytes-<platform>==<version>` through a template of its own version.
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


def version_files() -> list[pathlib.Path]:
    """Every _version.py of a distribution: the meta-package and each platform wheel."""
    files = [ROOT / "meta" / "src" / "bitsandbytes" / "_version.py"]
    files += sorted((ROOT / "platforms").glob("*/python/bitsandbytes_*/_version.py"))
    return files


def read_versions() -> dict[str, str]:
    """Path (relative) -> version found in it."""
    found = {"VERSION": (ROOT / "VERSION").read_text().strip()}
    for f in version_files():
        m = VERSION_RE.search(f.read_text())
        found[str(f.relative_to(ROOT))] = m.group(1) if m else "<missing>"
    return found


def set_version(version: str) -> None:
    """Write ``version`` to VERSION and every _version.py."""
    if not PEP440.match(version):
        raise SystemExit(f"set_version: {version!r} is not a PEP 440 release version")
    (ROOT / "VERSION").write_text(version + "\n")
    for f in version_files():
        f.write_text(HEADER + f'__version__ = "{version}"\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", nargs="?", help="the new version, e.g. 1.0.0")
    parser.add_argument("--check", action="store_true", help="only check that every copy agrees")
    args = parser.parse_args()
    if args.version:
        set_version(args.version)
    versions = read_versions()
    wrong = {k: v for k, v in versions.items() if v != versions["VERSION"]}
    for k, v in wrong.items():
        print(f"{k}: {v} (VERSION says {versions['VERSION']})", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
