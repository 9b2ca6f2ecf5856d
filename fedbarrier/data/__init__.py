"""Data: image datasets (``datasets``), a config's federation of client partitions
(``federation``), and datasets shared with client processes by memory mapping (``shared``)."""
