#!/usr/bin/env python3
"""protoc plugin that runs grpcio-tools' built-in gRPC Python generator.

grpcio-tools embeds its generator in protoc instead of shipping a plugin
binary, so buf cannot call it directly: this replays buf's request through
grpc_tools.protoc with --descriptor_set_in and returns the files it wrote.
"""

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = pathlib.Path(tmp, "descriptors.binpb")
        out = pathlib.Path(tmp, "out")
        out.mkdir()
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        args = ["grpc_tools.protoc", f"--descriptor_set_in={descriptors}"]
        if request.parameter:
            args.append(f"--grpc_python_opt={request.parameter}")
        args += [f"--grpc_python_out={out}", *request.file_to_generate]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed"
        else:
            for path in sorted(out.rglob("*.py")):
                response.file.add(name=str(path.relative_to(out)), content=path.read_text())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
