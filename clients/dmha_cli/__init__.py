"""The ``dmha`` command: client commands here, server commands added by ``dmha.cli`` entry points."""

from dmha_cli.main import PLUGIN_GROUP, build_parser, main

__all__ = ["PLUGIN_GROUP", "build_parser", "main"]
