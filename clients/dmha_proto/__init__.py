"""Generated gRPC stubs of protos/dmha/v1 (``make protos``); import ``dmha_proto.v1.<name>_pb2``."""

__all__: list[str] = []
