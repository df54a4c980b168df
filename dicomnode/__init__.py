"""nodestage DICOM node: receive, store, assemble, schedule and send."""
