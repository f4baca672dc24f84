"""Operator and data-engineer tools behind Faust's CLI: replay into a shadow, diff, promote or drop it,
consumer lag, tables, dead letters, tail (`agents.ops.commands` registers them on the worker's app)."""
