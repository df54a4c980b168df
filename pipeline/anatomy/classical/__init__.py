"""The classical anatomy backend: chest structures from CT Hounsfield units alone.

It needs no weights, no GPU and no network, and runs in seconds on a CPU (about
5-10 s for 512 x 512 x 130-300 slices on 2 cores). It is the default backend, and
the one to configure where TotalSegmentator's weights are not installed.

What it finds (canonical names; label values as in `pipeline.anatomy.names`):

- ``body``: tissue above -500 HU, the largest object after a small in-plane
  opening (which detaches the table and thin blankets), holes filled slice by
  slice. Arms that touch the trunk are included; separate arms are not.
- ``lung_left``, ``lung_right``: the large air-filled (< -400 HU) component(s)
  inside the body (slice by slice, inside the body's convex hull, so a chest wall
  thinner than a voxel does not matter), plus lung-like parts cut off by a thin
  septum; without the named airways; split into left and right where they touch
  (erosion, then nearest seed); vessels inside the lung filled in slice by slice.
- ``trachea``, ``main_bronchus_left``, ``main_bronchus_right``,
  ``bronchus_intermedius`` (the lumen): region growing from an air-filled tube
  near the midline around the lung apices, with a threshold raised step by step
  (-950 ... -780 HU) until the grown volume jumps (a leak into the lung). The tree
  is then split by geodesic distance from its top: the trachea ends where the
  tree first splits into two large branches (the carina); each main bronchus
  ends at its own first large split (right: the upper-lobe take-off; left: the
  upper/lower division); the bronchus intermedius is the right branch that heads
  caudally from the upper-lobe take-off to the next split. The trachea is cut
  130 mm above the carina, so larynx and pharynx stay out. The lumen edges are
  re-decided at full resolution (-500 HU).
- landmark ``carina``: the centre of the airway where the trachea splits (LPS mm).
- ``spine`` (our own name: all vertebrae as one object, without levels): bone
  above 200 HU around the spinal canal (found as the most posterior hole in the
  bone near the midline, slice by slice), marrow filled, the canal left out.
  Where no canal shows (a solid phantom spine), it is put 25 mm behind the
  centre of the vertebral bodies.
- ``aorta``: the descending aorta, found 0-60 mm below the carina as a round
  object (radius 9-16 mm) left of and in front of the spinal canal, then tracked
  slice by slice up over the back of the arch and down through the hiatus; the
  ascending aorta, the first of the round objects (radius 11-22 mm) about 40 mm
  in front of the carina, best first, whose track rises to within 40 mm of the
  top of the descending track (the pulmonary trunk, also round there, does not),
  tracked up to the arch and down to at most 50 mm below the carina, and cut
  where it widens by a quarter over its radius higher up (it has left the aortic
  root for the heart); and the arch, followed as the cheapest path through the
  vessel's core (3-D depth >= 45% of the smaller tracked radius, so side
  branches and touching nodes drop out) from the top of one track to the other
  (it bulges to the left of the straight line between them), with the vessel
  voxels within the local depth of that path, opened by a ball of the core
  radius. Contrast and non-contrast CT are both tried (lumen 120-700 HU, or
  -20-110 HU bounded by fat and lung). On contrast CT this works well (Dice 0.87
  against TotalSegmentator on LIDC-IDRI-0001, arch top within 3 mm). On
  non-contrast CT the great vessels touch each other without a fat plane, so the
  ascending aorta and the arch are found less reliably (they are on
  ACRIN-NSCLC-FDG-PET-042); without them the descending aorta's top still marks
  the top of the arch. When the descending aorta is not convincing (< 60 mm
  tracked), ``aorta`` is left out rather than guessed; the notes say which.
- ``heart``: the large soft-tissue mass between the lungs, below the carina and
  above the diaphragm. Candidates are soft tissue or contrast blood (-10 to 1000
  HU on the CT smoothed by ~1.5 mm, and not fat before smoothing) inside the
  convex hull of the lungs and sternum, slice by slice, that is not lung, airway,
  aorta or bone. The liver touches the heart through the diaphragm, so only
  candidates above the diaphragm count; its height per column is the lowest lung
  voxel (lower half of the chest), leaving out the columns under the upper heart
  (where the lung lies on the heart), interpolated across. The heart is the
  largest mass that survives an opening with an 8 mm ball (which detaches
  vessels, the esophagus, nodes and thin bridges), holes filled. Dice 0.82
  against TotalSegmentator on LIDC-IDRI-0001. It stops at the carina, so unlike
  TotalSegmentator's it holds no pulmonary trunk above that level.
- ``esophagus`` (from just above the carina down): tracked from the soft tissue
  and gas between the posterior tracheal wall and the vertebral body, 10-30 mm
  above the carina, down slice by slice by a mean shift (10 mm radius) over soft
  tissue or gas that is not lung, airway, aorta, heart or bone, moving at most 4
  mm per slice, until lung no longer lies within 80 mm on both sides (the
  hiatus). The label is the tissue within 8 mm of the track, a proxy of the
  wall's shape (a node pressed against the esophagus keeps its centre); its centre lies
  within 2 mm (median; 4 mm at most) of TotalSegmentator's on LIDC-IDRI-0001.
  Left out when tracked over less than 40 mm.
- ``clavicula_left``, ``clavicula_right``: per side, the most anterior elongated
  bone above 250 HU near the top of the lungs that starts within 40 mm of the
  midline and runs >= 40 mm laterally (dense venous contrast excluded).
- ``sternum``: the first bone (> 100 HU) met going back from the skin in a
  +-25 mm midline corridor, at a steady depth, from the clavicles' medial ends
  down; parts >= 30 mm long.

Where it is weaker than TotalSegmentator:

- no lung lobes, pulmonary veins or artery, superior vena cava, brachiocephalic
  veins or arteries, or thyroid: stations that need them must use proxies; no
  vertebral levels;
- the heart ends 25 mm below the carina (so a hilar mass is not taken for heart) and at a diaphragm interpolated from the lung
  bases: where the lungs do not reach down beside the heart, its lowest part is
  missed; a node that touches the heart with no fat between may be taken into it;
- the esophagus is a track with a fixed-radius shape, not above the carina; a
  mass or node pressed against it can pull the track aside;
- the aorta is partial on non-contrast CT (above), and may be absent;
- sternum and clavicles rely on bone thresholds and simple geometry; osteopenia,
  fractures, wires or unusual positions can defeat them;
- the airway split relies on the tree's shape: a tumour that obstructs or
  compresses a bronchus, a tracheal bronchus, or a leak at a thin wall change
  where bronchi are cut ("kept whole" notes); the split runs on a ~1.5-2 mm grid;
- consolidation, effusion, atelectasis and tumour are not air, so they are not
  lung here, whereas TotalSegmentator's lobes usually include them;
- TotalSegmentator's ``trachea`` runs ~2 cm into the main bronchi; ours stops at
  the carina (and the main bronchi carry their own labels).

All heavy steps run on a working grid of about 1.5-2 mm (integer block means);
the labels are put back on the exact CT grid by nearest neighbour. The CT may
come in any axis-aligned orientation: it is reoriented to LPS internally.
Everything found or not found is listed in `Anatomy.settings["notes"]`. Only a CT
without a body or without air-filled lungs is refused (`AnatomyError`); a scan
without the trachea (starting below the carina) still gives lungs and bones.
"""

from __future__ import annotations

from pipeline.anatomy.classical.assemble import VERSION, classical_airways_and_body, segment_classical

__all__ = ["VERSION", "classical_airways_and_body", "segment_classical"]
