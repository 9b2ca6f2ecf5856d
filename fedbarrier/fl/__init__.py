"""The federation layer: everything that touches Flower.

- ``protocol``: every message, metric and config key that crosses the wire, and the small
  ``Protocol`` classes through which strategies declare their extensions;
- ``round``: the Flower-free round pipeline (reply checks, byte counts, hooks, the typed record);
- ``adapter``: the thin Flower ``Strategy`` that runs any Message-API strategy through the pipeline;
- ``client_app`` / ``server_app``: Flower's apps; ``client_store``: a client's own state on disk;
- ``simulation``: running an experiment under Flower's simulation engine; ``apps``: the entry
  points for ``flwr run``.
"""
