"""The classical anatomy backend: chest structures from CT Hounsfield units alone.

It needs no weights, no GPU and no network, and runs in seconds on a CPU (see
bench/RESULTS.md). It is the default backend, and the one to configure where
TotalSegmentator's weights are not installed. One module per organ group:

- `grid`: the working grid (~1.5 mm in-plane, ~2 mm in z, LPS) and voxel tools;
- `body_airways`: ``body``; ``trachea``, ``main_bronchus_left/right``,
  ``bronchus_intermedius`` (region growing, then the tree split by geodesic
  distance from its top); landmark ``carina``; the ``cricoid`` landmark (where the
  lumen, going up, leaves the trachea's calibre: narrower in the subglottis, wider in
  the larynx and pharynx) and ``larynx_pharynx_air`` (the air above it, not lung);
- `lungs`: ``lung_left``, ``lung_right`` (air-filled components inside the body's
  hull, without the airways and the air of larynx and pharynx); landmarks
  ``lung_apex_left/right`` (the centre of each lung's highest slice);
- `aorta`: ``aorta`` (descending and ascending tracks, joined over the arch by the
  cheapest path through the vessel's core);
- `bones`: ``spine`` (all vertebrae, marrow filled, discs out, canal out),
  ``sternum``, ``clavicula_left/right``, ``ribs`` (bone in a shell around the lungs,
  and under the skin below them); ``Anatomy.mask("bone")`` is their union;
- `liver`: ``liver`` (tissue of the liver's density under the right lung's dome,
  split from the heart and the organs under the left dome by a watershed);
- `heart_vessels`: ``heart`` (soft tissue between the lungs below the carina, split
  from the organs under the diaphragm by a watershed); proxies of
  ``superior_vena_cava``, ``brachiocephalic_vein_right`` and ``pulmonary_artery``;
- `esophagus`: ``esophagus``, tracked from the cricoid (or the scan's top) through
  the hiatus to the gastro-esophageal junction;
- `assemble`: the order of the steps, the label map on the CT grid.

Each module's docstring says how, and its constants say with which numbers.

Where it is weaker than TotalSegmentator:

- no lung lobes, pulmonary veins, brachiocephalic arteries, thyroid or left
  brachiocephalic vein (it runs across, between arteries and thyroid, and a path
  through soft tissue followed them instead); no vertebral or rib levels;
- the heart starts 25 mm below the carina, so that a hilar or subcarinal mass is not
  taken for heart; TotalSegmentator's heart reaches above the carina;
- the SVC and the pulmonary artery are proxies (tracked round vessels; the pulmonary
  branches as paths to the hila, the right one only on contrast CT, since a right
  hilar mass looks like it without contrast); a short SVC track is left out;
- the esophagus is a track with a fixed-radius shape; a mass pressed against it can
  pull the track aside;
- the aorta is partial on non-contrast CT, and may be absent;
- bones rely on thresholds and simple geometry: the rib shell takes bits of the
  scapulae and misses rib ends beyond it; osteopenia, fractures or wires can
  defeat sternum and clavicles;
- the airway split relies on the tree's shape (a tumour that obstructs a bronchus,
  a tracheal bronchus, or a leak at a thin wall change where bronchi are cut);
- consolidation, effusion, atelectasis and tumour are not air, so they are not lung
  here, whereas TotalSegmentator's lobes usually include them;
- TotalSegmentator's ``trachea`` runs ~2 cm into the main bronchi; ours stops at
  the carina (and the main bronchi carry their own labels).

The CT may come in any axis-aligned orientation: it is reoriented to LPS
internally. Everything found or not found is listed in `Anatomy.settings["notes"]`.
Only a CT without a body or without air-filled lungs is refused (`AnatomyError`); a
scan without the trachea (starting below the carina) still gives lungs and bones.
"""

from __future__ import annotations

from pipeline.anatomy.classical.assemble import VERSION, classical_airways_and_body, segment_classical

__all__ = ["VERSION", "classical_airways_and_body", "segment_classical"]
