"""Pure high-availability logic: heartbeat codec, phi-accrual detection, host liveness."""
