//! Named blobs larger than one message ([`BlobStore`]): a JetStream object store, chunked by the server
//! client, so a value may exceed the server's `max_payload`. A put replaces the whole blob at once (readers
//! see the old or the new one, never a mix). The pipeline keeps a collector's windows here, with the stream
//! position they reflect inside the same blob.

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;

use crate::{BusError, BusErrorKind};

/// An object-store bucket of named blobs.
#[derive(Clone)]
pub struct BlobStore {
    bucket: String,
    store: object_store::ObjectStore,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl BlobStore {
    /// Opens `bucket`, creating it (file storage, `replicas`, compressed) when missing.
    ///
    /// # Errors
    /// [`BusErrorKind::StreamConfig`] when it can be neither found nor created.
    pub async fn ensure(
        client: &async_nats::Client,
        bucket: &str,
        description: &str,
        replicas: usize,
    ) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        if let Ok(store) = js.get_object_store(bucket).await {
            return Ok(Self {
                bucket: bucket.to_owned(),
                store,
            });
        }
        let created = js
            .create_object_store(object_store::Config {
                bucket: bucket.to_owned(),
                description: Some(description.to_owned()),
                num_replicas: replicas.max(1),
                compression: true,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => Ok(Self {
                bucket: bucket.to_owned(),
                store,
            }),
            // Created meanwhile by another process.
            Err(e) => match js.get_object_store(bucket).await {
                Ok(store) => Ok(Self {
                    bucket: bucket.to_owned(),
                    store,
                }),
                Err(_) => Err(BusError::during(
                    BusErrorKind::StreamConfig,
                    "create object store",
                    bucket,
                    e,
                )),
            },
        }
    }

    /// Stores `bytes` as `name`, replacing what was there.
    ///
    /// # Errors
    /// [`BusErrorKind::Publish`] (retryable).
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BusError> {
        let mut reader = bytes;
        self.store
            .put(name, &mut reader)
            .await
            .map(|_| ())
            .map_err(|e| BusError::during(BusErrorKind::Publish, "put blob", &self.bucket, e))
    }

    /// The blob `name`, or `None`.
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] (retryable) when it cannot be read.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BusError> {
        let mut object = match self.store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(BusError::during(
                    BusErrorKind::Other,
                    "get blob",
                    &self.bucket,
                    e,
                ));
            }
        };
        let mut out = Vec::new();
        object
            .read_to_end(&mut out)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Other, "read blob", &self.bucket, e))?;
        Ok(Some(out))
    }

    /// Removes `name` (nothing when it is not there).
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] (retryable).
    pub async fn delete(&self, name: &str) -> Result<(), BusError> {
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(BusError::during(
                BusErrorKind::Other,
                "delete blob",
                &self.bucket,
                e,
            )),
        }
    }
}
