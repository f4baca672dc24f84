"""Faust tables: one module per table, named <key>_to_<value>, RocksDB-backed with a changelog."""
