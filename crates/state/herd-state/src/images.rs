//! The image gallery's records: list, resolve (`latest`), add an imported image, delete one
//! that no scale set uses.
//!
//! Why here: an image record is referred to by every scale set's model, so adding and removing
//! one are checked against the sets (a used image stays) and logged in the same transaction.
//! The files behind a record (copying, uploads) are the API's; the records are here.

use crate::activity::user_event;
use crate::keys::{ImageKey, ALL};
use crate::records::StateError;
use chrono::{DateTime, Utc};
use herd_model::image::{self, Image, ImageSource};
use herd_model::scale_set::{ScaleSetModel, StoredScaleSet};
use herd_model::ImageUrn;
use herd_store::{Expect, Kind, Store, StoreExt, WriteOp};

/// Why an image operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} is not in the gallery")]
    NotInGallery(ImageUrn),
    #[error("image {0} already exists; delete it first or use a new version")]
    Exists(ImageUrn),
    #[error("image {urn} is in use by scale set(s) {}; change their image first", .sets.join(", "))]
    InUse { urn: ImageUrn, sets: Vec<String> },
    #[error(transparent)]
    State(#[from] StateError),
}

crate::records::store_error_via_state!(ImageError);

/// The gallery record of an image imported as `urn` from `source`.
pub fn image_record(urn: &ImageUrn, source: ImageSource, guest_agent: Option<bool>, now: DateTime<Utc>) -> Image {
    Image {
        id: format!("/images/{urn}"),
        urn: urn.to_string(),
        publisher: urn.publisher.clone(),
        offer: urn.offer.clone(),
        sku: urn.sku.clone(),
        version: urn.version.clone(),
        source,
        guest_agent,
        digest: None,
        created_at: now,
    }
}

/// The image of `all` a model names (`latest` resolved), if the gallery has it.
fn image_of<'a>(all: &'a [Image], model: &ScaleSetModel) -> Option<&'a Image> {
    let urn = model.virtual_machine_profile.storage_profile.image_reference.urn().ok()?;
    image::resolve(all, &urn)
}

/// Every image in the gallery.
pub fn images(store: &dyn Store) -> Result<Vec<Image>, StateError> {
    Ok(store.list_as::<Image>(Kind::Image, ALL)?.into_iter().map(|o| o.value).collect())
}

/// The image `urn` names (`latest` resolves to the highest version).
pub fn resolve_image(store: &dyn Store, urn: &ImageUrn) -> Result<Image, ImageError> {
    image::resolve(&images(store)?, urn).cloned().ok_or_else(|| ImageError::NotInGallery(urn.clone()))
}

/// Refuses an import of `urn` when the gallery has it already (checked before the files are
/// copied; [`add_image`] checks again, as a create).
pub fn check_new_image(store: &dyn Store, urn: &ImageUrn) -> Result<(), ImageError> {
    match store.get(Kind::Image, &ImageKey::new(urn).to_string())? {
        Some(_) => Err(ImageError::Exists(urn.clone())),
        None => Ok(()),
    }
}

/// Adds an imported image (`from` says where its files came from, for the log).
pub fn add_image(store: &dyn Store, img: &Image, from: &str, now: DateTime<Utc>) -> Result<(), ImageError> {
    let message = format!("{} image imported from {from}", img.source.kind());
    store.txn(vec![
        WriteOp::put(Kind::Image, ImageKey::new(&img.urn()).to_string(), img, Expect::Absent)?,
        WriteOp::Activity(user_event(now, "", &img.urn, "ImportImage", message)),
    ])?;
    Ok(())
}

/// Records `digest` as the content digest of image `urn`, if it is still the image whose
/// content was hashed (same source) and has none yet. Returns whether it was written.
pub fn set_digest(store: &dyn Store, urn: &ImageUrn, source: &ImageSource, digest: &str) -> Result<bool, StateError> {
    let key = ImageKey::new(urn).to_string();
    let Some(obj) = store.get_as::<Image>(Kind::Image, &key)? else { return Ok(false) };
    if obj.value.digest.is_some() || obj.value.source != *source {
        return Ok(false);
    }
    let mut img = obj.value;
    img.digest = Some(digest.to_string());
    store.txn(vec![WriteOp::put(Kind::Image, key, &img, Expect::Revision(obj.revision))?])?;
    Ok(true)
}

/// Whether the model's image runs the QEMU guest agent: `None` when the image is not in the
/// gallery or is a directory (its instances are processes, never VMs), `Some(None)` when that
/// is not known yet.
pub fn guest_agent_of(store: &dyn Store, model: &ScaleSetModel) -> Result<Option<Option<bool>>, StateError> {
    Ok(image_of(&images(store)?, model)
        .filter(|i| !matches!(i.source, herd_model::image::ImageSource::Directory { .. }))
        .map(|i| i.guest_agent))
}

/// Deletes image `urn` (exactly that version), unless a scale set's model uses it. Returns the
/// deleted record (its files are the caller's to remove).
pub fn delete_image(store: &dyn Store, urn: &ImageUrn, now: DateTime<Utc>) -> Result<Image, ImageError> {
    let key = ImageKey::new(urn).to_string();
    let obj = store.get_as::<Image>(Kind::Image, &key)?.ok_or_else(|| ImageError::NotInGallery(urn.clone()))?;
    let all = images(store)?;
    let sets: Vec<String> = store
        .list_as::<StoredScaleSet>(Kind::ScaleSet, ALL)?
        .into_iter()
        .filter(|s| image_of(&all, &s.value.model).is_some_and(|i| ImageKey::new(&i.urn()).to_string() == key))
        .map(|s| s.key)
        .collect();
    if !sets.is_empty() {
        return Err(ImageError::InUse { urn: urn.clone(), sets });
    }
    store.txn(vec![
        WriteOp::delete(Kind::Image, key, Expect::Revision(obj.revision)),
        WriteOp::Activity(user_event(now, "", &obj.value.urn, "DeleteImage", "image deleted".into())),
    ])?;
    Ok(obj.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{activity_count, now, store, stored_set};

    fn image(urn: &str) -> Image {
        let source = ImageSource::Directory { path: "/nowhere".into() };
        image_record(&ImageUrn::parse(urn).unwrap(), source, Some(true), now())
    }

    #[test]
    fn images_are_added_once_resolved_by_latest_and_kept_while_used() {
        let store = store();
        let (v1, v2) = (ImageUrn::parse("P:O:S:1").unwrap(), ImageUrn::parse("P:O:S:2").unwrap());
        add_image(&store, &image("P:O:S:1"), "a directory", now()).unwrap();
        add_image(&store, &image("P:O:S:2"), "a directory", now()).unwrap();
        assert!(matches!(check_new_image(&store, &v1), Err(ImageError::Exists(_))));
        assert!(add_image(&store, &image("P:O:S:1"), "again", now()).unwrap_err().to_string().contains("conflict"));
        let latest = resolve_image(&store, &ImageUrn::parse("P:O:S:latest").unwrap()).unwrap();
        assert_eq!(latest.version, "2");
        // The test set uses P:O:S:1.
        let set = stored_set("rg", "web", 1);
        store.txn(vec![WriteOp::put(Kind::ScaleSet, set.key(), &set, Expect::Absent).unwrap()]).unwrap();
        assert_eq!(guest_agent_of(&store, &set.model).unwrap(), None, "a directory image never runs as a VM");
        let before = activity_count(&store);
        let err = delete_image(&store, &v1, now()).unwrap_err();
        assert_eq!(err.to_string(), "image P:O:S:1 is in use by scale set(s) rg/web; change their image first");
        assert_eq!(activity_count(&store), before, "a refused delete logs nothing");
        assert_eq!(delete_image(&store, &v2, now()).unwrap().version, "2");
        assert!(matches!(resolve_image(&store, &v2), Err(ImageError::NotInGallery(_))));
    }

    #[test]
    fn a_digest_is_recorded_once_and_only_for_the_content_hashed() {
        let store = store();
        let urn = ImageUrn::parse("P:O:S:1").unwrap();
        add_image(&store, &image("P:O:S:1"), "a directory", now()).unwrap();
        let elsewhere = ImageSource::Directory { path: "/elsewhere".into() };
        assert!(!set_digest(&store, &urn, &elsewhere, "sha256:aa").unwrap(), "another source: not this content");
        let source = ImageSource::Directory { path: "/nowhere".into() };
        assert!(set_digest(&store, &urn, &source, "sha256:aa").unwrap());
        assert!(!set_digest(&store, &urn, &source, "sha256:bb").unwrap(), "recorded once");
        assert_eq!(resolve_image(&store, &urn).unwrap().digest.as_deref(), Some("sha256:aa"));
        assert!(!set_digest(&store, &ImageUrn::parse("P:O:S:9").unwrap(), &source, "sha256:aa").unwrap());
    }

    /// On the qemu server a directory image runs as process instances: no guest agent line,
    /// and extension changes in place without one. A kernel image's VMs need the agent.
    #[test]
    fn only_vm_images_need_a_guest_agent() {
        use crate::instance_actions::in_place_extensions;
        let set = stored_set("rg", "web", 1);
        let urn = ImageUrn::parse("P:O:S:1").unwrap();
        for (source, agent, vm) in [
            (ImageSource::Directory { path: "/nowhere".into() }, Some(false), false),
            (ImageSource::Kernel { kernel: "/vmlinuz".into(), initrd: None, cmdline: None }, Some(false), true),
            (ImageSource::Kernel { kernel: "/vmlinuz".into(), initrd: None, cmdline: None }, Some(true), true),
        ] {
            let store = store();
            add_image(&store, &image_record(&urn, source.clone(), agent, now()), "a test", now()).unwrap();
            let expected_line = vm.then_some(agent);
            assert_eq!(guest_agent_of(&store, &set.model).unwrap(), expected_line, "{source:?}");
            let in_place = !vm || agent == Some(true);
            assert_eq!(in_place_extensions(&store, &set, true).unwrap(), in_place, "qemu server, {source:?}");
            assert!(in_place_extensions(&store, &set, false).unwrap(), "other drivers run scripts in place");
        }
    }
}
