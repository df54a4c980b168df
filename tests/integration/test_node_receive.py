"""Receiving: real senders (dcmtk storescu, pynetdicom) against the node's listening AE."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.index.storage import safe_name
from dicomnode.index.studies import READY, RECEIVING
from dicomnode.receive.scp import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES
from tests.peers import free_port
from tests.node_fixtures import (counts, deep_merge, make_config, pynetdicom_store, running_node,  # noqa: F401
                                      small_study, storescu, study_row)
from tests.pki import make_pki

pytestmark = pytest.mark.network


@pytest.fixture(params=["native", "pynetdicom"])
def engine(request) -> str:
    """Every receive test runs on both engines (node.engine): the default and its fallback."""
    return request.param


def engine_config(engine: str, tmp_path: Path, overrides: dict | None = None):
    return make_config(tmp_path, deep_merge({"node": {"engine": engine}}, overrides or {}))


def _uids(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sorted(folder.rglob("*.dcm"))}


def test_storescu_study_is_stored_raw_indexed_and_duplicates_count_once(engine, tmp_path, small_study):
    cfg = engine_config(engine, tmp_path)
    src = small_study.out_dir / "dicom"
    sent = _uids(src)
    study_uid = small_study.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        result = storescu(src, node.port)
        assert result.returncode == 0, result.stderr[-2000:]
        assert counts(node) == {"instances": len(sent), "ignored": 0, "studies": 1}
        rows = node.storage.query("SELECT * FROM instances")
        assert {r["sop_uid"] for r in rows} == set(sent)
        for row in rows[:20]:
            stored = cfg.storage.spool_dir / row["path"]
            assert stored.parent.parent.name == safe_name(study_uid)
            original = pydicom.dcmread(sent[row["sop_uid"]])
            copy = pydicom.dcmread(stored)
            assert copy.SOPInstanceUID == row["sop_uid"]
            assert copy.PixelData == original.PixelData  # written raw, nothing lost
        assert not list((cfg.storage.spool_dir / ".incoming").iterdir())

        again = storescu(src, node.port)  # the same study again
        assert again.returncode == 0, again.stderr[-2000:]
        assert counts(node) == {"instances": len(sent), "ignored": 0, "studies": 1}
        times = {r["times_received"] for r in node.storage.query("SELECT times_received FROM instances")}
        assert times == {2}
        assert len(list(cfg.storage.spool_dir.rglob("*.dcm"))) == len(sent)
        assert study_row(node, study_uid)["state"] == RECEIVING


def test_one_instance_per_association_still_completes_the_study(engine, tmp_path, small_study):
    """A PACS that opens one association per instance: every instance indexed once, and the study
    completes (completeness never waits for an association to close)."""
    cfg = engine_config(engine, tmp_path, {"studies": {"guard_seconds": 0.1}})
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    pet = sorted((small_study.out_dir / "dicom" / "pet").glob("*.dcm"))
    study_uid = small_study.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        assert storescu(ct, node.port).returncode == 0
        for f in pet:
            r = storescu([f], node.port)
            assert r.returncode == 0, r.stderr[-500:]
        assert counts(node)["instances"] == len(ct) + len(pet)
        assert {r["times_received"] for r in node.storage.query("SELECT * FROM instances")} == {1}
        row = study_row(node, study_uid)
        assert node.tracker.scan(now=row["last_received"] + 0.15) == [row["id"]]
        assert study_row(node, study_uid)["state"] == READY


def test_three_senders_at_once_index_every_instance_exactly_once(engine, tmp_path, small_study):
    cfg = engine_config(engine, tmp_path)
    files = sorted((small_study.out_dir / "dicom").rglob("*.dcm"))
    with running_node(cfg) as node:
        results: list = []

        def send(aet: str) -> None:
            results.append(storescu(files, node.port, calling_aet=aet))

        threads = [threading.Thread(target=send, args=(aet,)) for aet in ("STORESCU", "SENDER2", "SENDER3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
        assert counts(node) == {"instances": len(files), "ignored": 0, "studies": 1}
        assert {r["times_received"] for r in node.storage.query("SELECT * FROM instances")} == {3}
        assert len(list(cfg.storage.spool_dir.rglob("*.dcm"))) == len(files)
        assert node.storage.query_one("SELECT value FROM counters WHERE name = 'instances_duplicate'")[0] == \
            2 * len(files)


def test_calling_ae_not_on_the_allow_list_is_rejected(engine, tmp_path, small_study):
    cfg = engine_config(engine, tmp_path)
    one = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:1]
    with running_node(cfg) as node:
        r = storescu(one, node.port, calling_aet="INTRUDER")
        assert r.returncode != 0
        assert "reject" in (r.stdout + r.stderr).lower()
        assert counts(node)["instances"] == 0
        ok = storescu(one, node.port)  # the node still serves allowed AEs
        assert ok.returncode == 0, ok.stderr
        assert counts(node)["instances"] == 1
        assert node.storage.query_one("SELECT value FROM counters WHERE name = 'associations_rejected'")[0] == 1


def test_peer_address_allow_list(engine, tmp_path, small_study):
    one = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:1]
    cfg = engine_config(engine, tmp_path / "a", {"security": {"allowed_peer_addresses": ["10.0.0.0/8"]}})
    with running_node(cfg) as node:
        r = storescu(one, node.port)
        assert r.returncode != 0
        assert counts(node)["instances"] == 0
    cfg = engine_config(engine, tmp_path / "b", {"security": {"allowed_peer_addresses": ["127.0.0.0/8"]}})
    with running_node(cfg) as node:
        r = storescu(one, node.port)
        assert r.returncode == 0, r.stderr
        assert counts(node)["instances"] == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_undecodable_or_incomplete_data_gets_a_failure_status_and_the_node_goes_on(engine, tmp_path, small_study):
    cfg = engine_config(engine, tmp_path)
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    raw = ct[0].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[:-4000])  # pixel data cut short
    garbage = tmp_path / "garbage.dcm"
    ds = pydicom.dcmread(ct[1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(garbage)
    meta_end = 132 + 12 + int.from_bytes(garbage.read_bytes()[140:144], "little")
    garbage.write_bytes(garbage.read_bytes()[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x99" * 300)
    no_study = pydicom.dcmread(ct[2])
    del no_study.StudyInstanceUID
    with running_node(cfg) as node:
        statuses = pynetdicom_store(node.port, [truncated, garbage], raw_files=True)
        assert statuses == [STATUS_CANNOT_UNDERSTAND, STATUS_CANNOT_UNDERSTAND]
        assert pynetdicom_store(node.port, [no_study]) == [STATUS_CANNOT_UNDERSTAND]
        assert counts(node)["instances"] == 0
        assert not [p for p in cfg.storage.spool_dir.rglob("*") if p.is_file()]
        assert pynetdicom_store(node.port, [ct[3]]) == [0x0000]  # still serving
        assert counts(node)["instances"] == 1
        errors = node.storage.query("SELECT message FROM errors WHERE kind = 'receive'")
        assert any("truncated pixel data" in e["message"] for e in errors)
        assert any("missing StudyInstanceUID" in e["message"] for e in errors)


def test_below_the_disk_watermark_the_node_answers_out_of_resources(engine, tmp_path, small_study):
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    cfg = engine_config(engine, tmp_path, {"storage": {"min_free_mb": free_mb * 4}})
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:2]
    with running_node(cfg) as node:
        assert pynetdicom_store(node.port, ct) == [STATUS_OUT_OF_RESOURCES] * 2
        assert counts(node)["instances"] == 0
        assert not list(cfg.storage.spool_dir.rglob("*.dcm"))


def test_other_storage_classes_are_accepted_and_ignored(engine, tmp_path, small_study):
    """Routing a whole study never fails: a Secondary Capture is accepted, logged, not kept."""
    cfg = engine_config(engine, tmp_path)
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    sc = pydicom.dcmread(ct[0])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sc.Modality = "OT"
    sc_path = tmp_path / "sc.dcm"
    sc.save_as(sc_path)
    with running_node(cfg) as node:
        r = storescu([sc_path, ct[0]], node.port)
        assert r.returncode == 0, r.stderr
        assert counts(node) == {"instances": 1, "ignored": 1, "studies": 1}
        assert len(list(cfg.storage.spool_dir.rglob("*.dcm"))) == 1


def test_echo_and_tcp_nodelay_on_accepted_sockets(engine, tmp_path):
    import socket

    from dicomnode.app.commands import echo

    cfg = engine_config(engine, tmp_path)
    with running_node(cfg) as node:
        assert echo(f"NODESTAGE@127.0.0.1:{node.port}", calling_aet="STORESCU")["ok"] is True
        assert echo(f"NODESTAGE@127.0.0.1:{node.port}", calling_aet="INTRUDER")["ok"] is False
        seen = []
        original = node.scp.server.get_request

        def spy():
            sock, addr = original()
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            return sock, addr

        node.scp.server.get_request = spy
        assert echo(f"NODESTAGE@127.0.0.1:{node.port}", calling_aet="STORESCU")["ok"] is True
        assert seen and all(seen)
    assert echo(f"NODESTAGE@127.0.0.1:{free_port()}")["ok"] is False


def test_tls_echo_and_store(engine, tmp_path, small_study):
    """Optional TLS: a client with a certificate from our CA is served; a plain connection is not."""
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    pki = make_pki(tmp_path / "pki")
    cfg = engine_config(engine, tmp_path, {"security": {"tls": {
        "enabled": True, "certificate": str(pki["node.pem"]), "private_key": str(pki["node.key"]),
        "ca_certificate": str(pki["ca.pem"])}}})
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:1]
    with running_node(cfg) as node:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="NODESTAGE", tls_args=(ctx, None))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(pydicom.dcmread(ct[0])).Status == 0
        assoc.release()
        assert counts(node)["instances"] == 1
        plain = storescu(ct, node.port)
        assert plain.returncode != 0
