"""streamml: streaming machine-learning lifecycle on Bytewax, RocksDB, ONNX Runtime and Kafka."""

__all__ = ["__version__"]

__version__ = "0.1.0"
