//! Firehose wire format: frames, CAR v1, DAG-CBOR to ATProto JSON, identifier syntax. Pure, no I/O.
