"""IASLC 2009 lymph-node station map from an anatomy label map (DESIGN.md §4).

Pure: a label image and its name table in (optionally the anatomy's landmark
points and the CT), a station label image on the same grid plus a table of
landmark levels out. No I/O.

Modules: `constants` (every number a rule uses), `model` (`Landmark`,
`StationMap`), `grid` (working grid, geometry helpers), `landmarks` (the levels),
`spaces` (mediastinal space, spine front, space below the diaphragm, stand-in
esophagus), `regions` (the stations, one step per group), `build` (the entry
point and the clean-up on the input grid).

How it works
============
The label map is resampled (nearest neighbour) onto an internal working grid:
axis-aligned in patient LPS space (x towards the patient's left, y posterior,
z superior), 2 mm voxels, on a lattice fixed in physical space. Every rule
below is written in those physical coordinates, so the result does not depend
on the input's orientation, slice order or feet-first/head-first positioning;
the station map is then resampled back onto the input grid (nearest
neighbour), and voxels the input labels as a structure other than lung or a
container ("body", "mediastinum", "thoracic_cavity") are cleared: stations are
the fat around the structures, never the lumen of a vessel or airway. On the
input grid two more clean-ups run: 3p voxels at or behind the first vertebra
voxel of their axial column are cleared (thin bone edges vanish at 2 mm); and,
when the CT is given and contrast-enhanced (aorta median >= 150 HU), enhanced
blood (>= 150 HU) 3D-connected to a labelled vessel, or forming a run of at
least 2 ml, is cleared (proxy for unlabelled vessels: with TotalSegmentator
labels the pulmonary artery, azygos and jugular veins). Node soft tissue stays
well below 150 HU.

Working regions
---------------
* **Lungs**: the five lobes (or lung_right / lung_left where a source has no
  lobes). Without lungs nothing is assessable.
* **Free space**: voxels no structure claims (unlabelled fat and soft tissue, or
  a container label such as "body"); inside "body" when the source has one.
* **Mediastinal space**: free space, per axial slice, lying between the two
  lungs row by row (left of the right lung's medial edge and right of the left
  lung's medial edge), plus the space behind the sternum within the sternum's
  left-right extent (inside the convex hull of lungs and sternum); never in
  front of the posterior surface of the sternum, never behind the anterior
  surface of the vertebral bodies / spinal cord.
* **Airway**: trachea plus main bronchi and bronchus intermedius. Below the
  carina, airway components right of the carina are the right bronchi, left of
  it the left bronchi (so a TotalSegmentator trachea label that runs into the
  main bronchi is used as bronchi).

Landmark levels (each recorded in `StationMap.landmarks` with its source)
--------------------------------------------------------------------------
* **Carina**: the lowest axial level at which the airway is still one lumen;
  just below it the airway label splits into two lumens side by side (right and
  left main bronchus). If it never splits, the lower end of the trachea label.
  Its x/y are the airway centroid there.
* **Aortic arch, upper border**: the top of the aorta label. **Lower border**:
  going down from the top, the level where the aorta label first separates into
  two parts (ascending in front, descending behind; each part at least 100 mm²
  in the slice, so a speck at the edge of the arch's cap does not count); above
  it the arch is one component bridging both. Where no separate ascending aorta
  is labelled: the lowest level (continuous from the top) at which the aorta
  still reaches the tracheal midline. If the aorta runs out of the top of the
  field of view, or neither holds, the arch is not identified.
* **Left brachiocephalic vein crossing (caudal margin)**: the lowest voxel of the
  brachiocephalic_vein_left label lying within the trachea's left-right extent
  (i.e. where it crosses in front of the trachea).
  Proxy without it: the upper border of the aortic arch.
* **Azygos arch, lower border**: the lowest voxel of the azygos_vein label lying
  in front of the posterior tracheal wall (the arch that runs forward over the
  right main bronchus to the superior vena cava).
  Proxy without it: the carina level (the azygos arch lies at the right
  tracheobronchial angle).
* **Left pulmonary artery, upper rim**: the top of the pulmonary_artery label
  left of the carina (or its top).
  Proxies in order: the top of the heart label (TotalSegmentator's heart label
  includes the pulmonary trunk and left pulmonary artery), only when it reaches
  to within 10 mm below the carina (a heart label ending lower shows no
  pulmonary trunk); 10 mm above the top of the pulmonary_vein label; 10 mm
  above the carina. A proxy is kept no lower
  than 10 mm below the carina, and any value below the lower border of the arch
  (clamped, and noted in the source).
* **Lower border of station 7, right**: the lower end of the
  bronchus_intermedius label. Proxies: the top of the right middle lobe (the
  middle-lobe bronchus leaves the bronchus intermedius at its lower end); else
  40 mm below the carina. Kept 15 to 60 mm below the carina.
* **Lower border of station 7, left** (upper border of the left lower lobe
  bronchus): the lower end of the main_bronchus_left label. Proxy: 35 mm below
  the carina.
* **Inferior pulmonary vein** (upper border of station 9), per side: the lowest
  voxel of the pulmonary_vein label on that side. Proxy: the lower border of
  station 7 on that side.
* **Lung bases** (lower border of stations 8 and 9): the lowest lung voxel on
  each side (the diaphragm dome from the diaphragm or liver label is recorded
  for reference). If the lung runs out of the field of view, the field of view
  bottom.
* **Manubrium upper border**: the top of the sternum label. Proxy: the sternal
  ends of the clavicles; else the lung apex.
* **Lung apex** per side: the top of the lung.
* **Cricoid lower margin** (upper border of station 1): the anatomy's
  ``cricoid`` landmark; proxy: the top of the trachea label; where either lies
  at the top of the scan, the scan starts below the cricoid and station 1
  starts at the top of the field of view.
* **Clavicles**: level of each clavicle's sternal end (station 1's floor lateral
  to the lung apices).
* **Diaphragm**: per (y, x) column, the top of the abdominal organs (liver,
  stomach, spleen, kidneys, bowel ...) plus 4 mm, carried 20 mm sideways (the
  dome's slope and the crura). Nothing at or below it is free space, so no
  station reaches below the diaphragm or into the liver. Proxy without any
  abdominal organ: the lung bases.

Station rules (first matching rule wins, in this order)
--------------------------------------------------------
"Right"/"left" above the carina is split at the **left** lateral border of the
trachea (IASLC): pretracheal nodes up to the left tracheal wall are right-sided.
(Near the carina the split uses the trachea's own width, measured 10-40 mm
above the carina, so the flaring main bronchi do not move it.) Distances are in
the axial plane unless said otherwise.

1. **1R/1L** (low cervical, supraclavicular, sternal notch): from the cricoid
   down to the upper border of the manubrium within the trachea's left-right
   extent, to the higher of the manubrium and the lung apex beside it, and,
   outside the mediastinal space, to the clavicles. Free space (never the
   thyroid, larynx/pharynx air, vessels, airway, bone or a labelled muscle)
   within 70 mm of the trachea's axis; from 30 mm in front of the anterior
   tracheal wall in the midline (sternal notch), 5 mm beside it; back to 30 mm
   behind the posterior tracheal wall but never behind the vertebral bodies'
   anterior surface. Muscle proxy (CT HU cannot tell muscle from node): at
   least 15 mm deep to the skin, and on slices with labelled neck vessels
   (carotid, subclavian, brachiocephalic, jugular) only the fat within 20 mm of
   them. Split R/L at the tracheal midline.
2. **3p** (retrotracheal): mediastinal space from the station-1 border down to
   the carina, behind the posterior tracheal wall and within the trachea's
   left-right extent; in front of the spine (the mediastinal space ends at the
   most anterior vertebral surface within 6 mm in z, so disc spaces open no gap).
3. **3a / 6** (prevascular): mediastinal space from the station-1 border to the
   carina, in front of the great vessels (SVC, brachiocephalic veins and trunk,
   carotid and subclavian arteries, aorta, pulmonary artery, heart; only vessel
   voxels in front of the trachea's centre count, and of the pulmonary artery and
   heart only those in front of its anterior wall: the left PA rising behind the
   AP window must not put the window in front of the vessels; columns without a
   vessel are interpolated). Where no vessel is labelled on a slice the vessel front is
   taken 15 mm in front of the trachea (proxy). At arch levels, prevascular
   space within 15 mm of the aorta and not to the right of the anterior aortic
   segment's centre is **6** (para-aortic, anterior and lateral to the
   ascending aorta/arch); all other prevascular space is **3a**.
4. **8R/8L, first pass**: below the lower border of station 7, mediastinal
   space within 15 mm of the esophageal wall (before any hilar rule).
5. **7** (subcarinal): mediastinal space below the carina, between the medial
   walls of the right and left bronchi (carried down from the lowest slice where
   they are labelled; at least 4 mm either side of the carina; proxy without
   any bronchus below the carina: 15 mm either side of it), from 15 mm in
   front of the carina back to the esophagus's posterior wall (at least 40 mm
   behind the carina), plus the fat within 15 mm of the esophageal wall (the
   azygo-esophageal recess; station 8 only begins below station 7), down to
   the lower border of station 7 (the bronchus intermedius for the right half,
   the left lower lobe bronchus for the left).
6. **Right side** (right of the left tracheal wall above the carina, right of
   the station-7 column below it; not more than 20 mm behind the posterior
   tracheal wall): above the left brachiocephalic vein crossing **2R**; from
   there down to the lower border of the azygos arch **4R** (below the carina
   only within 20 mm of the airway); below it, down to the inferior pulmonary
   vein, **10R**.
7. **Left side** (left of the left tracheal wall above the carina, left of the
   station-7 column below it; not more than 30 mm behind the posterior tracheal
   wall): above the arch **2L**; at arch levels **4L** within 15 mm of the
   airway, else **6**; between the lower border of the arch and the upper rim
   of the left pulmonary artery **4L** within 15 mm of the airway (medial to
   the ligamentum arteriosum, which CT does not show: proxy), else **5**; in
   front of the PA's highest point (and above the carina) the window reaches
   down to the PA's own upper surface, column by column (the PA arches: its
   rim is not a plane); below the pulmonary artery, down to the inferior
   pulmonary vein, **10L**.
   Below the carina, **10R/10L** (hilar) is limited to free space within 20 mm
   (3D) of that side's bronchi or of a pulmonary artery / pulmonary vein label
   on that side, in the mediastinal space or in the lung root (free space in
   the concavity of that lung's axial convex hull), plus lung within 10 mm of
   the bronchi. On slices with none of these labelled on that side (proxy):
   mediastinal space within 15 mm of that lung, from 40 mm in front of to 30 mm
   behind the carina. The hilar zone ends at the inferior pulmonary vein (the
   IASLC "interlobar region" is not visible on CT).
8. **9R/9L** (pulmonary ligament): from the inferior pulmonary vein down to the
   lung base, mediastinal space within 20 mm of that lung and nearer to it than
   to the esophageal wall, from 20 mm in front of to 30 mm behind the
   esophagus's centre and within 60 mm of it to the side.
9. **8R/8L** (paraesophageal): from the lower border of station 7 down to the
   lung base, mediastinal space within 25 mm of the esophageal wall, split R/L
   at the esophagus's centre.
   Without an esophagus label (proxy), rules 4, 8 and 9 use a stand-in
   esophagus below the carina: per slice a disc of 8 mm radius, 15 mm in front
   of the descending aorta's centre (the aorta component nearest the vertebral
   body, within 40 mm in front of it) and midway in x between it and the
   vertebral body's centre (slices without an aorta: the median offsets of the
   others), smoothed along z. Without a spine label either: station 8 is the
   mediastinal space behind a line 10 mm in front of the carina, within 30 mm of
   the carina's x, split at the carina's x.
10. **11-14** (intrapulmonary): the rest of each lung, with free pockets that
    the lung encloses in an axial slice (a node inside the lung). CT shows no
    bronchial generations, so the split is a proxy by 3D distance from the
    hilum (station 10 and the bronchi): **11** (interlobar) lung within 5 mm of
    another lobe and within 30 mm of the hilum; **12** (lobar) within 20 mm;
    **13** (segmental) 20–40 mm; **14** (subsegmental) beyond. Without a hilum
    in the field of view all of it is 14 and 11-13 are not assessable. All four
    are ipsilateral N1, so the split never changes the N category.

A station whose defining landmark is missing (outside the field of view, or not
labelled and without a proxy) is listed in `not_assessable` with the reason; it
is neither guessed nor built. A station whose borders exist but which holds no
voxel in the field of view is also listed there.
"""

from __future__ import annotations

from pipeline.stations.build import build_station_map
from pipeline.stations.constants import STATION_VALUES, STATIONS
from pipeline.stations.model import Landmark, StationMap

__all__ = ["build_station_map", "Landmark", "StationMap", "STATION_VALUES", "STATIONS"]
