//! The ImageService side of corral-cri, and image lookups for pods and containers.
//! (Interface first; the bodies land with the image service.)

use std::sync::Arc;

use protocol::grpc::runtime::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};

use crate::corrald::Corrald;
use crate::error::{Error, Result};
use crate::oci::ImageConfig;
use crate::spec::ImageEtc;

/// A local image as pods and containers use it.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// The corrald image record's name that matched (a normalised reference).
    pub name: String,
    /// The image id: the config's digest (`sha256:...`).
    pub id: String,
    /// Every name of this image (`repo:tag`) and its digests (`repo@sha256:...`).
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The top layer's chain ID: the committed snapshot containers are prepared on.
    pub chain_id: String,
    pub config: ImageConfig,
    /// Compressed size of config and layers.
    pub size: u64,
}

/// Registry credentials for a pull (from the CRI AuthConfig).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub identity_token: String,
}

pub struct Images {
    corrald: Corrald,
}

impl Images {
    pub fn new(corrald: Corrald) -> Images {
        Images { corrald }
    }

    /// The local image a reference (name, short name, id, id prefix or digest reference)
    /// names; None if there is none.
    pub async fn get(&self, reference: &str) -> Result<Option<Image>> {
        let _ = (&self.corrald, reference);
        Err(Error::unimplemented("image lookup"))
    }

    /// The local image, pulled first if missing.
    pub async fn ensure(&self, reference: &str, auth: Option<&Auth>) -> Result<Image> {
        let _ = auth;
        match self.get(reference).await? {
            Some(i) => Ok(i),
            None => Err(Error::unimplemented("image pull")),
        }
    }

    pub async fn list_images(&self, r: ListImagesRequest) -> Result<ListImagesResponse> {
        let _ = r;
        Err(Error::unimplemented("ListImages"))
    }

    pub async fn image_status(&self, r: ImageStatusRequest) -> Result<ImageStatusResponse> {
        let _ = r;
        Err(Error::unimplemented("ImageStatus"))
    }

    pub async fn pull_image(&self, r: PullImageRequest) -> Result<PullImageResponse> {
        let _ = r;
        Err(Error::unimplemented("PullImage"))
    }

    pub async fn remove_image(&self, r: RemoveImageRequest) -> Result<RemoveImageResponse> {
        let _ = r;
        Err(Error::unimplemented("RemoveImage"))
    }

    pub async fn image_fs_info(&self, r: ImageFsInfoRequest) -> Result<ImageFsInfoResponse> {
        let _ = r;
        Err(Error::unimplemented("ImageFsInfo"))
    }

    /// /etc/passwd and /etc/group of an image (cached per image).
    pub async fn etc(&self, image: &Image) -> Result<Arc<ImageEtc>> {
        let _ = image;
        Ok(Arc::new(ImageEtc::default()))
    }
}
