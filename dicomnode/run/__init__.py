"""Running the pipeline: when a study is processed, and how.

`scheduler` runs the node's periodic jobs (the stability scan, the outbox, clean-up);
`worker` takes the next queued job, runs it through an `executor` (today a local
subprocess, ``python -m dicomnode.run.pipeline_job``, in its own process group with a
timeout), reads its result, queues the outputs in the outbox and marks the study
DONE or FAILED; `pipeline_job` is the child's entry point.
"""
