"""mempool: graph classification with memory-based pooling (MemPooling)."""
__version__ = "0.1.0"
