"""High-availability shells: cluster key files, the UDP heartbeat sender and receiver, the monitor loop."""
