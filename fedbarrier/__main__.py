"""``python -m fedbarrier`` is the ``fedbarrier`` command."""

from fedbarrier.cli import console

console()
