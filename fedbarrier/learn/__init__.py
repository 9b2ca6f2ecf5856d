"""Learning without Flower: the models (``models``) and the local training/evaluation loop that
clients, tests and benchmarks share (``local``)."""
