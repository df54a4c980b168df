"""The application: configuration, the command line, and the wiring of the stages.

`config` validates ``config.yaml``; `cli` parses arguments and `commands` does what
`nodestage serve / status / echo / reprocess` mean; `node` starts receive, index,
run and send in one process, in order, and exports its metrics; `health` answers
/healthz and /readyz; `runtime` is what a running node says about itself; `logs`
keeps library loggers quiet; `demo`, `orthanc` and `viewer` run the demo with
Orthanc and OHIF.
"""
