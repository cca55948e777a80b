"""``nonstop up``: a whole cluster from one command (store, lab, controller, balancers, API).

Role: orchestration only — ``session`` runs one cluster until told to stop, ``runfiles`` records
where it is, ``stores`` provides the store, ``watch`` reports boot progress.

Must not: decide placement or liveness (the controller does), or build lab pieces itself
(nonstop.lab.cluster.LabCluster does).
"""
