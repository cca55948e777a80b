"""The controller process (issue 6): heartbeats → liveness → fencing → failover, failback,
maintenance, placement and balancer sync as level-triggered loops over the store.
See docs/controller.md."""
