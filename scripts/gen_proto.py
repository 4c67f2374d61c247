"""Generate livegate/protocol/proto/client_pb2.py (and .pyi) from client.proto.

    python scripts/gen_proto.py          # regenerate (what `make proto` runs)
    python scripts/gen_proto.py --check  # exit 1 when the committed code is stale

Uses grpcio-tools' bundled protoc (pinned in the test extras, so the output is reproducible).
One change is made to protoc's output: the descriptors go into a private descriptor pool
(``POOL``) instead of the process-wide default one. Other code in the same process (the
centrifuge-python SDK, for one) registers its own ``client.proto`` in package
``centrifugal.centrifuge.protocol``; two files of one name in one pool refuse to load.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "livegate" / "protocol" / "proto"
OUTPUTS = ("client_pb2.py", "client_pb2.pyi")

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# livegate: a private pool, so that another client.proto of this package (an SDK's) can load too.\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            str(PROTO_DIR / "client.proto")]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    module = out_dir / "client_pb2.py"
    text = module.read_text()
    if text.count(_DEFAULT_POOL) != 1:
        raise SystemExit("protoc output changed shape: the descriptor pool line was not found once")
    module.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL))
    stub = out_dir / "client_pb2.pyi"
    stub.write_text(stub.read_text().replace(
        "DESCRIPTOR: _descriptor.FileDescriptor\n",
        "DESCRIPTOR: _descriptor.FileDescriptor\nPOOL: _descriptor_pool.DescriptorPool\n", 1,
    ).replace("from google.protobuf import descriptor as _descriptor\n",
              "from google.protobuf import descriptor as _descriptor\n"
              "from google.protobuf import descriptor_pool as _descriptor_pool\n", 1))


def stale() -> list[str]:
    """Unified diffs of every generated file that differs from a fresh generation."""
    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in OUTPUTS:
            fresh = (Path(tmp) / name).read_text().splitlines(keepends=True)
            committed_path = PROTO_DIR / name
            committed = committed_path.read_text().splitlines(keepends=True) if committed_path.exists() else []
            if fresh != committed:
                diffs.append("".join(difflib.unified_diff(committed, fresh, f"committed/{name}", f"fresh/{name}")))
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the committed code is up to date")
    if parser.parse_args().check:
        diffs = stale()
        if diffs:
            sys.stdout.write("".join(diffs))
            print("generated Protobuf code is stale: run `make proto`", file=sys.stderr)
            return 1
        return 0
    generate(PROTO_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
