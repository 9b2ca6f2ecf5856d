"""What a run shows its user besides its records: tidy tables, TensorBoard events, live progress.

Layer 4 (tests/test_architecture.py): these read records and draw nothing into them; the round
pipeline (``fedbarrier.fl``) feeds the TensorBoard writer and the progress display.
"""
