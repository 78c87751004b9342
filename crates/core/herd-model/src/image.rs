//! The local image gallery: images by URN, and how `latest` resolves. [`content`]: an
//! image's content as one stream and its digest, by which joined hosts fetch and cache it.

pub mod content;

use crate::ids::{ImageUrn, Version};
use serde::{Deserialize, Serialize};

/// What an image holds. The process driver uses a directory; the QEMU driver uses a disk or a
/// kernel + initrd. Paths point into the server's gallery directory, where `herd image import`
/// copied the files; they are read-only from then on (instances get overlays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ImageSource {
    /// A directory copied into each instance's working directory; it must hold an executable `init`.
    Directory { path: String },
    /// A bootable disk (with its own bootloader), used as the read-only backing file of each
    /// instance's qcow2 overlay.
    #[serde(rename_all = "camelCase")]
    Disk {
        path: String,
        /// `qcow2` or `raw`.
        format: String,
    },
    /// Direct kernel boot: each instance gets an empty OS disk of its own.
    #[serde(rename_all = "camelCase")]
    Kernel {
        kernel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
    },
}

impl ImageSource {
    /// A short word for tables: `directory`, `disk` or `kernel`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Directory { .. } => "directory",
            ImageSource::Disk { .. } => "disk",
            ImageSource::Kernel { .. } => "kernel",
        }
    }
}

/// An image in the gallery.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub id: String,
    /// `publisher:offer:sku:version`.
    pub urn: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
    pub source: ImageSource,
    /// Whether the image runs the QEMU guest agent (`org.qemu.guest_agent.0`).
    ///
    /// `true`: readiness waits for it and extensions run in place through it. `false`:
    /// readiness is the boot-complete line on the serial console and an extension change falls
    /// back to a reimage. `null`: not known yet (a disk imported without `--guest-agent`, a kernel
    /// whose initrd shows no `qemu-ga`): each VM of it probes `guest-ping` until its boot
    /// deadline, and the first answer records `true` here.
    /// Nothing records `false`: only the import does, when told so.
    #[serde(default)]
    pub guest_agent: Option<bool>,
    /// `sha256:<hex>` of the image's content (see [`content`]): what a joined host fetches and
    /// caches it by. Computed at import; for an image imported before digests existed, once,
    /// when the server starts (absent until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Image {
    pub fn urn(&self) -> ImageUrn {
        ImageUrn {
            publisher: self.publisher.clone(),
            offer: self.offer.clone(),
            sku: self.sku.clone(),
            version: self.version.clone(),
        }
    }

    /// Whether the guest agent is known to be there: extension runs happen in place.
    pub fn has_guest_agent(&self) -> bool {
        self.guest_agent == Some(true)
    }

    /// Records that the guest agent answered on a VM booted from this image. Only an unknown
    /// agent becomes known (`true`); an explicit answer given at import is the user's and stays.
    /// Returns whether the image changed (and must be written).
    pub fn agent_answered(&mut self) -> bool {
        match self.guest_agent {
            None => {
                self.guest_agent = Some(true);
                true
            }
            Some(_) => false,
        }
    }

    /// The store key: the URN in lower case, since Azure URNs are case-insensitive.
    pub fn key(urn: &ImageUrn) -> String {
        urn.to_string().to_ascii_lowercase()
    }
}

/// Resolves `urn` against the gallery: an exact version, or the highest version for `latest`.
pub fn resolve<'a>(images: &'a [Image], urn: &ImageUrn) -> Option<&'a Image> {
    let family = images.iter().filter(|i| i.urn().same_family(urn));
    if urn.is_latest() {
        family.max_by_key(|i| Version::parse(&i.version))
    } else {
        family.into_iter().find(|i| i.version == urn.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(v: &str) -> Image {
        Image {
            id: String::new(),
            urn: format!("P:O:S:{v}"),
            publisher: "P".into(),
            offer: "O".into(),
            sku: "S".into(),
            version: v.into(),
            source: ImageSource::Directory { path: "/x".into() },
            guest_agent: None,
            digest: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn an_answering_agent_is_recorded_only_when_unknown() {
        let mut unknown = img("1.0.0");
        assert!(unknown.agent_answered(), "unknown becomes known");
        assert_eq!(unknown.guest_agent, Some(true));
        assert!(unknown.has_guest_agent());
        assert!(!unknown.agent_answered(), "recorded once");
        let mut declared_absent = Image { guest_agent: Some(false), ..img("1.0.0") };
        assert!(!declared_absent.agent_answered(), "--guest-agent false is the user's override");
        assert_eq!(declared_absent.guest_agent, Some(false));
        assert!(!declared_absent.has_guest_agent());
        assert!(!img("1.0.0").has_guest_agent(), "unknown is not present: extension changes reimage");
    }

    #[test]
    fn latest_is_highest_numeric_version() {
        let all = vec![img("1.0.9"), img("1.0.10"), img("1.0.2")];
        let latest = resolve(&all, &ImageUrn::parse("p:o:s:latest").unwrap()).unwrap();
        assert_eq!(latest.version, "1.0.10");
        assert_eq!(resolve(&all, &ImageUrn::parse("P:O:S:1.0.2").unwrap()).unwrap().version, "1.0.2");
        assert!(resolve(&all, &ImageUrn::parse("P:O:S:2.0").unwrap()).is_none());
    }
}
