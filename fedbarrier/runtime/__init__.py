"""A run's machinery below Flower: the run directory and its records (``rundir``), building a
run's model from its config (``build``), scratch folders (``scratch``), stopping on a signal
between records (``stopping``), process tuning and the latency patches for Flower's simulation
engine (``engine_patches``)."""
