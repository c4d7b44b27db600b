"""Lint the protos with buf and check them for breaking changes against an earlier commit.

buf comes from the npm package @bufbuild/buf (proto/package.json). The protos import
google/api/field_behavior.proto, which googleapis-common-protos ships; it is copied beside them
so that buf resolves imports without reaching a registry.
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
BUF = PROTO / "node_modules" / ".bin" / "buf"
IMPORTS = ("google/api/field_behavior.proto",)


def _googleapis() -> pathlib.Path:
    import google.api  # the installed googleapis-common-protos

    return pathlib.Path(next(iter(google.api.__path__))).parent.parent


def _workspace(into: pathlib.Path, protos: pathlib.Path) -> pathlib.Path:
    """A directory buf can build: our protos, the imported Google ones, and buf.yaml."""
    shutil.copytree(protos / "campaignd", into / "campaignd")
    for name in IMPORTS:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_googleapis() / name, into / name)
    shutil.copy(PROTO / "buf.yaml", into / "buf.yaml")
    return into


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _baseline() -> str:
    """The commit before the newest change to proto/: what clients were last built against."""
    newest = _git("log", "-1", "--format=%H", "--", "proto/campaignd")
    if _git("rev-parse", "--is-shallow-repository") == "true":
        subprocess.run(["git", "fetch", "--quiet", "--deepen=50"], cwd=ROOT, check=False)
    return _git("rev-parse", f"{newest}~1")


def _export(commit: str, into: pathlib.Path) -> pathlib.Path:
    """The protos as they were at `commit`."""
    listing = _git("ls-tree", "-r", "--name-only", commit, "--", "proto/campaignd").splitlines()
    for path in listing:
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(
            subprocess.run(
                ["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True
            ).stdout
        )
    return into / "proto"


def main() -> int:
    """Run buf lint, then buf breaking against `--against` (default: before the last proto change)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--against", help="a commit to compare with (default: before the newest proto change)"
    )
    args = parser.parse_args()
    if not BUF.exists():
        print(f"{BUF} is missing: run 'npm ci --prefix proto'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        current = _workspace(work / "current", PROTO)
        lint = subprocess.run([str(BUF), "lint"], cwd=current, check=False)
        if lint.returncode != 0:
            print("buf lint failed", file=sys.stderr)
            return 1
        print("buf lint: the protos follow the configured rules")
        against = args.against or _baseline()
        old = _workspace(work / "old", _export(against, work / "export"))
        image = work / "old.binpb"
        subprocess.run([str(BUF), "build", "-o", str(image)], cwd=old, check=True)
        breaking = subprocess.run([str(BUF), "breaking", "--against", str(image)], cwd=current, check=False)
        if breaking.returncode != 0:
            print(f"buf breaking: incompatible with the protos of {against[:12]}", file=sys.stderr)
            return 1
        print(f"buf breaking: compatible with the protos of {against[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
