"""The cloud-device contract as .proto files, shipped inside the install as ``dcrec.protos``.

``importlib.resources.files("dcrec.protos") / "dcrec/v1/recommend.proto"`` is the
contract an app or a gRPC tool (grpcurl ``-proto``) builds against; the Python
stubs made from it live in ``dcrec.shared.proto``.
"""
