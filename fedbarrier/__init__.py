"""fedbarrier: federated-learning simulation with layer-wise barrier instrumentation."""

__version__ = "0.1.0"
