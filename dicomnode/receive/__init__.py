"""Receiving: the listening AE and what it decides before a sender gets its status.

`scp` is the store policy (allow-lists of AE titles and addresses, the precise
C-STORE statuses, the raw durable write into the spool) and is the same for every
engine; `instance_bytes` reads the header from the received bytes. The bytes are
carried by one of two engines: the native DICOM Upper Layer acceptor (`ul_pdu`,
`ul_dimse`, `ul_server`) or pynetdicom (`scp_pynetdicom`).
"""
