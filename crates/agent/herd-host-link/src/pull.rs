//! The image pull service: a joined host asks for a gallery image by content digest, on a
//! connection of its own, and gets the image's content stream (`herd_model::image::content`).
//!
//! Why a second connection on the agent ALPN and not an HTTPS route: the host is already
//! authenticated there exactly as for its link (its certificate must be the one its host
//! record names), with no second way in to keep in step; and the bytes of a large image never
//! queue behind or in front of the link's heartbeats and calls, which have their own TCP
//! connection and task. The server does not check the content as it sends it: the host hashes
//! what it receives, and refuses it if it is not the digest it asked for.
//!
//! Also here: the digests of the gallery (what hosts should keep), and the digest of an image
//! imported before digests existed, computed once.

use crate::HostLinks;
use herd_agent_wire::{ImageRef, ServerMessage};
use herd_model::image::{content, Image, ImageSource};
use herd_state::State;
use std::collections::BTreeSet;
use std::io::Write;
use tokio::io::AsyncWriteExt;

/// The bytes of one write to the connection.
const CHUNK: usize = 256 << 10;

/// Serves one pull of `digest` to host `host`, on `tls`, to its end.
pub(crate) async fn serve<S>(links: &HostLinks, tls: &mut S, host: &str, digest: &str) -> Result<(), String>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let all = match links.state.run(herd_state::images::images).await {
        Ok(all) => all,
        Err(e) => return refuse(tls, host, format!("reading the gallery: {e}")).await,
    };
    let Some(image) = all.into_iter().find(|i| i.digest.as_deref() == Some(digest)) else {
        let why = format!("no image in the gallery has digest {digest} (deleted meanwhile?)");
        return refuse(tls, host, why).await;
    };
    let source = image.source.clone();
    let entries = match tokio::task::spawn_blocking(move || content::entries(&source)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return refuse(tls, host, format!("image {}: {e}", image.urn)).await,
        Err(e) => return refuse(tls, host, format!("image {}: {e}", image.urn)).await,
    };
    let size = content::stream_len(&entries);
    herd_agent_wire::write(tls, &ServerMessage::PullStart { digest: digest.to_string(), size })
        .await
        .map_err(|e| e.to_string())?;
    links.count_pull(host);
    tracing::info!(%host, image = %image.urn, %digest, bytes = size, "serving an image pull");
    // The files are read on a blocking thread; this task only writes what it hands over.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let reading = tokio::task::spawn_blocking(move || {
        let mut out = Chunks { tx, buf: Vec::with_capacity(CHUNK) };
        content::write_stream(&entries, &mut out).and_then(|()| {
            out.flush().map_err(|e| content::ContentError::Io { path: "the connection".into(), source: e })
        })
    });
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        tls.write_all(&chunk).await.map_err(|e| format!("host {host} pulling {}: {e}", image.urn))?;
        sent += chunk.len() as u64;
    }
    match reading.await {
        Ok(Ok(())) => {}
        // The host sees a short stream and refuses it; nothing more to tell it.
        Ok(Err(e)) => return Err(format!("image {}: {e}", image.urn)),
        Err(e) => return Err(format!("image {}: {e}", image.urn)),
    }
    tls.shutdown().await.map_err(|e| e.to_string())?;
    tracing::info!(%host, image = %image.urn, bytes = sent, "image pull served");
    Ok(())
}

async fn refuse<S: tokio::io::AsyncWrite + Unpin>(tls: &mut S, host: &str, reason: String) -> Result<(), String> {
    tracing::warn!(%host, %reason, "an image pull refused");
    let _ = herd_agent_wire::write(tls, &ServerMessage::PullRefused { reason: reason.clone() }).await;
    Err(reason)
}

/// A `Write` that hands full chunks to the connection's task.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for Chunks {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let take = (CHUNK - self.buf.len()).min(b.len());
        self.buf.extend_from_slice(&b[..take]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the connection closed"))
    }
}

/// The digests of every image in the gallery now: what hosts should keep. `None` when the
/// gallery cannot be read (hosts are then told nothing, never "keep nothing").
pub(crate) async fn wanted(state: &State) -> Option<BTreeSet<String>> {
    let all = state.run(herd_state::images::images).await.ok()?;
    Some(all.into_iter().filter_map(|i| i.digest).collect())
}

/// The digest of `image`, computed (and recorded) now if it has none yet.
pub async fn digest_of(state: &State, image: &Image) -> Result<String, String> {
    if let Some(d) = &image.digest {
        return Ok(d.clone());
    }
    let source = image.source.clone();
    let d = tokio::task::spawn_blocking(move || content::digest(&source))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("image {}: {e}", image.urn))?;
    let (urn, source, recorded) = (image.urn(), image.source.clone(), d.clone());
    state
        .run(move |s| herd_state::images::set_digest(s, &urn, &source, &recorded))
        .await
        .map_err(|e| format!("recording the digest of image {}: {e}", image.urn))?;
    Ok(d)
}

/// Computes the digest of every gallery image that has none (imported before digests).
pub async fn fill_digests(state: &State) {
    let Ok(all) = state.run(herd_state::images::images).await else { return };
    for image in all.iter().filter(|i| i.digest.is_none()) {
        match digest_of(state, image).await {
            Ok(d) => tracing::info!(image = %image.urn, digest = %d, "image digest computed"),
            Err(e) => tracing::warn!(error = %e, "an image's digest could not be computed"),
        }
    }
}

/// The gallery image a spec's `source` came from, as a host fetches it; `None` when no gallery
/// image has that source (a spec not built from the gallery).
pub async fn image_ref(state: &State, source: &ImageSource) -> Result<Option<ImageRef>, String> {
    let all = state.run(herd_state::images::images).await.map_err(|e| format!("reading the gallery: {e}"))?;
    let Some(image) = all.into_iter().find(|i| i.source == *source) else { return Ok(None) };
    let digest = digest_of(state, &image).await?;
    Ok(Some(ImageRef { urn: image.urn.clone(), digest }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_image_imported_before_digests_gets_its_digest_once_and_specs_name_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init"), b"#!/bin/sh\n").unwrap();
        let source = ImageSource::Directory { path: dir.path().display().to_string() };
        let state = State::in_memory().unwrap();
        let urn = herd_model::ImageUrn::parse("P:O:S:1").unwrap();
        let old = herd_state::images::image_record(&urn, source.clone(), Some(false), chrono::Utc::now());
        assert!(old.digest.is_none());
        herd_state::images::add_image(&**state.store(), &old, "a test", chrono::Utc::now()).unwrap();
        assert_eq!(wanted(&state).await.unwrap().len(), 0, "no digest yet: nothing a host could hold");
        fill_digests(&state).await;
        let expected = content::digest(&source).unwrap();
        let all = state.run(herd_state::images::images).await.unwrap();
        assert_eq!(all[0].digest.as_deref(), Some(expected.as_str()));
        assert_eq!(wanted(&state).await.unwrap().into_iter().collect::<Vec<_>>(), vec![expected.clone()]);
        let r = image_ref(&state, &source).await.unwrap().unwrap();
        assert_eq!((r.urn.as_str(), r.digest.as_str()), ("P:O:S:1", expected.as_str()));
        // A spec built from no gallery image names none: its paths pass as they are.
        let elsewhere = ImageSource::Directory { path: "/srv/not-the-gallery".into() };
        assert!(image_ref(&state, &elsewhere).await.unwrap().is_none());
    }
}
