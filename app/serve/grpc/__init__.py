"""gRPC: ``inference.GRPCInferenceService`` (the Open Inference Protocol) and ``grpc.health.v1``.

``open_inference_grpc.proto`` is the protocol's own file, unchanged: github.com/kserve/open-inference-protocol,
``specification/protocol/open_inference_grpc.proto`` at commit d49cc23f89d709d87b210ef9449e273ae243984e
(Apache-2.0, Copyright 2023 The KServe Authors). The ``_pb2`` modules are generated from it, from the repository
root, with grpcio-tools 1.85.1 (protobuf 7.35 gencode; runs on protobuf >= 7.35.1)::

    python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \\
        app/serve/grpc/open_inference_grpc.proto
"""
