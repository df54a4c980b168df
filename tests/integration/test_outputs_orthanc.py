"""A real PACS (Orthanc) accepts our SEG, SR and Secondary Capture over C-STORE, and renders
the Secondary Capture: what a site without SEG or SR support would show."""

import io
import urllib.request

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.peers import storescu
from tests.result_factory import outputs_for


@pytest.mark.network
def test_orthanc_stores_our_objects_and_previews_the_summary(phantom_studies, orthanc):
    result, paths = outputs_for(phantom_studies["n2b_right_4r_7"].out_dir)
    dicom_dir = paths["seg"].parent
    # -R: propose exactly the SOP classes of the files (storescu's default list lacks SEG);
    # -xr: also RLE Lossless, the SEG's transfer syntax (outputs.seg_encoding: fractional_rle).
    sent = storescu(dicom_dir, orthanc.dicom_port, orthanc.aet, extra=["-R", "-xr"])
    assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
    instances = orthanc.get("/instances")
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
                for name, p in paths.items() if name in ("seg", "sr", "summary", "stations_seg")}
    stored = {}
    for iid in instances:
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        stored[tags["SOPInstanceUID"]] = (iid, tags)
    assert set(stored) == set(expected)
    modalities = sorted(tags["Modality"] for _iid, tags in stored.values())
    assert modalities == ["OT", "SEG", "SEG", "SR"]
    for uid, (_iid, tags) in stored.items():
        assert tags["StudyInstanceUID"] == result.study_instance_uid

    sc_uid = pydicom.dcmread(paths["summary"], stop_before_pixels=True).SOPInstanceUID
    iid = stored[sc_uid][0]
    with urllib.request.urlopen(f"{orthanc.url}/instances/{iid}/preview", timeout=60) as r:
        assert r.headers.get("Content-Type", "").startswith("image/png")
        preview = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    ours = pydicom.dcmread(paths["summary"]).pixel_array
    assert preview.shape == ours.shape
    assert preview.std() > 20  # not blank
    assert np.abs(preview.astype(int) - ours.astype(int)).mean() < 2.0  # Orthanc shows our image
