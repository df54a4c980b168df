"""nodestage staging pipeline: PET/CT in, N-stage and DICOM outputs out.

`pipeline/` never imports `dicomnode/`: it runs offline on a study folder.
"""

__version__ = "0.1.0"
