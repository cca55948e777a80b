"""Pure decisions of the controller: what to do given desired state, observed state and ``now``.

Modules: ``ops`` (the failover operation as a state table), ``failover`` (which guests go where
after a host is fenced), ``failback`` (policy, stability window, hysteresis), ``backends``
(each service's backend list from the healthy replicas), ``guestfail`` (restart in place or
move). See docs/controller.md.

Must not: do I/O, read a clock or import a shell (import-linter enforces it).
"""
