"""Fleet simulator: plausible drivers pinging the gateway's HTTP API."""
