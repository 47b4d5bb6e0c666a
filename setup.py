"""Generates the gRPC stubs (hsmd/v1, from proto/) when a wheel is built, so that `pip install`
of a clean clone, or of its wheel, gives a working client without a `make` step. In a
development checkout `make` generates them in place (and an editable install leaves them to it).
Everything else about the package is in pyproject.toml."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_ROOT = Path(__file__).parent / "proto"


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib)
        if not (target / "hsmd" / "v1" / "__init__.py").exists():
            _generate(target)


def _generate(target: Path) -> None:
    import google.rpc  # googleapis-common-protos: google/rpc/status.proto
    from grpc_tools import protoc

    googleapis = Path(google.rpc.__path__[0]).parents[1]
    bundled = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    plugins = []
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        found = shutil.which(name) or str(Path(sys.executable).parent / name)
        plugins.append(f"--plugin={name}={found}")
    protos = sorted(str(path) for path in (PROTO_ROOT / "hsmd" / "v1").glob("*.proto"))
    (target / "hsmd" / "v1").mkdir(parents=True, exist_ok=True)
    arguments = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{googleapis}",
        f"-I{bundled}",
        *plugins,
        f"--python_out={target}",
        f"--grpc_python_out={target}",
        f"--mypy_out={target}",
        f"--mypy_grpc_out={target}",
        *protos,
    ]
    if protoc.main(arguments) != 0:
        raise RuntimeError("protoc could not generate the gRPC stubs from proto/")
    (target / "hsmd" / "v1" / "__init__.py").touch()


setup(cmdclass={"build_py": BuildWithStubs})
