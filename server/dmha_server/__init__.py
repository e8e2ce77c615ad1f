"""The gRPC server: servicers that translate proto <-> core, and the ``dmha`` server commands.

:func:`create_server` builds the ``grpc.aio`` server over a :class:`~dmha.runtime.Runtime`;
:func:`serve` runs it until interrupted. Modules are imported on use, so the ``dmha``
command can register the server commands without loading the model stack.
"""

__all__: list[str] = []
