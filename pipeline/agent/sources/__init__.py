"""Flow-log sources the agent can read from."""
