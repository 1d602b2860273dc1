"""Layers."""
from mempool_cli.nn.batch_norm import FastBatchNorm1d
from mempool_cli.nn.dropout import dropout, leaky_relu_dropout, residual_relu_dropout
from mempool_cli.nn.gin import FastGINConv, GINMLP
from mempool_cli.nn.mem_pool import MemPooling

__all__ = ["FastBatchNorm1d", "FastGINConv", "GINMLP", "MemPooling", "dropout", "leaky_relu_dropout",
           "residual_relu_dropout"]
