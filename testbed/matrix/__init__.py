"""The traversal matrix: its run spec and slots (spec), the labs its slots run in (lab,
layer2), one lab's run in a worker (runner), the workers (workers), progress output
(progress), the results document (document) and the whole run (run)."""
