"""Layers."""
from mempool_cli.nn.dropout import dropout, leaky_relu_dropout, residual_relu_dropout
from mempool_cli.nn.gin import FastGINConv
from mempool_cli.nn.mem_pool import MemPooling

__all__ = ["FastGINConv", "MemPooling", "dropout", "leaky_relu_dropout", "residual_relu_dropout"]
