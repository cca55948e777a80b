"""Pure guest logic: definitions and status records, the lifecycle table, the reconcile decision."""
