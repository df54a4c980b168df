"""FDG-avid lesions read as a radiologist reads them (DESIGN.md §4 "Reading a focus").

- `candidates`: threshold, connected components of at least 3 PET voxels, split at
  their separate SUV peaks (watershed) before any shape test;
- `measure`: SUVmax (PET voxel), SUVpeak (1 cm³), SUVmean, MTV, TLG, peak position,
  short axis on the node's own CT soft tissue;
- `references`: blood pool (descending aorta) and PERCIST liver (3 cm sphere, right
  lobe): mean, SD, CV;
- `physiologic`: bone/marrow, brown fat, esophagus, myocardium, larynx/pharynx,
  neck muscle, thyroid, vessels — named, never counted for N;
- `classify`: primary / node (by the station holding its peak) / physiologic /
  lung / outside stations / distant;
- `reading`: positive / equivocal / negative / enlarged non-avid;
- `enlarged`: non-avid enlarged nodes found on CT;
- `detect`: the orchestration `run_study` calls; `nnunet`: the nnU-Net backend.
"""

from pipeline.lesions.candidates import LesionError
from pipeline.lesions.detect import LesionFindings, detect_lesions
from pipeline.lesions.references import ReferenceRegion

__all__ = ["LesionError", "LesionFindings", "ReferenceRegion", "detect_lesions"]
