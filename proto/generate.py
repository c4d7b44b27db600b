"""Regenerate the Python code and type stubs for proto/campaignd/v1 into src/campaignd/v1."""

import os
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    """Run protoc with the Python, gRPC and mypy generators."""
    import google.api  # googleapis-common-protos ships the field_behavior.proto we import

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    googleapis = pathlib.Path(next(iter(google.api.__path__))).parent.parent
    # protoc finds the mypy plugins on PATH; they live beside this interpreter.
    bindir = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={ROOT / 'src'}",
        f"--grpc_python_out={ROOT / 'src'}",
        f"--mypy_out={ROOT / 'src'}",
        f"--mypy_grpc_out={ROOT / 'src'}",
        *protos,
    ]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
