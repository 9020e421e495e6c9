"""Pipeline steps: one `run(...)` per step, the only layer that knows artifact paths.

The KFP components and the CLI both call these functions, so a step behaves the same from a notebook,
the command line, a local pipeline run or a cluster.
"""
