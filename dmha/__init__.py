"""DMHA, the core library: memory, knowledge base, metacognition and online learning.

No transport here (no grpc, no protobuf): the server (``dmha_server``) reaches the
core through :mod:`dmha.runtime`. The public API lives in the subpackages
(``dmha.memory``, ``dmha.knowledge``, ``dmha.llm``, ``dmha.metacognition``,
``dmha.learning``, ``dmha.auth``) and in the modules ``dmha.config``,
``dmha.errors``, ``dmha.ids``, ``dmha.turn``, ``dmha.context`` and ``dmha.runtime``;
importing ``dmha`` alone loads none of them.
"""

__all__: list[str] = []
