"""Component redundancy (pure): redundancy state per component group, host health, policy."""
