"""The index: the node's SQLite database, its spool of files, and the study state machine.

`db` is the only code that issues SQL: it owns the schema, the numbered migrations
and the state vocabularies (`StudyState`, `JobState`, `SendState`, importable from
here). `storage` knows the spool's files and opens the index; `studies` groups
received instances into studies, decides when one is complete and keeps the job
queue, through the index's typed methods.
"""

from dicomnode.index.db import FINISHED_STUDY_STATES, JobState, SendState, StudyState

__all__ = ["FINISHED_STUDY_STATES", "JobState", "SendState", "StudyState"]
