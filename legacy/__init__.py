"""The legacy platform livetrack replaces, as far as the bridge sees it: its PostgreSQL queue table and the jobs filling it."""
