"""Faust agents: one module per consumed topic, thin loops over pure functions."""
