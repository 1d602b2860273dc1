"""Layers."""
from mempool_cli.nn.dropout import dropout
from mempool_cli.nn.mem_pool import MemPooling

__all__ = ["MemPooling", "dropout"]
