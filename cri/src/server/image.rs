//! `runtime.v1.ImageService`: request in, [`crate::image::Images`] call, response out.

use std::pin::Pin;
use std::sync::Arc;

use protocol::grpc::runtime::v1::image_service_server::ImageService;
use protocol::grpc::runtime::v1::*;
use protocol::grpc::tonic::{self, Request, Response, Status};
use tokio_stream::Stream;

use crate::core::Cri;
use crate::error::Error;

pub struct Images(pub Arc<Cri>);

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn answer<T>(method: &str, r: Result<T, Error>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| {
        if e.is_not_found() {
            log::debug!("{method}: {e}");
        } else {
            log::warn!("{method}: {e}");
        }
        e.into()
    })
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        r: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        answer(
            "list_images",
            self.0.images.list_images(r.into_inner()).await,
        )
    }

    async fn image_status(
        &self,
        r: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        answer(
            "image_status",
            self.0.images.image_status(r.into_inner()).await,
        )
    }

    async fn pull_image(
        &self,
        r: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let deadline = super::client_deadline(r.metadata());
        let pull = self.0.images.pull_image(r.into_inner());
        answer(
            "pull_image",
            super::within_deadline(deadline, "PullImage", pull).await,
        )
    }

    async fn remove_image(
        &self,
        r: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        answer(
            "remove_image",
            self.0.images.remove_image(r.into_inner()).await,
        )
    }

    async fn image_fs_info(
        &self,
        r: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        answer(
            "image_fs_info",
            self.0.images.image_fs_info(r.into_inner()).await,
        )
    }

    /// Everything in one message: the chunked variant of ListImages.
    async fn stream_images(
        &self,
        r: Request<StreamImagesRequest>,
    ) -> Result<Response<Streamed<StreamImagesResponse>>, Status> {
        let list = self
            .0
            .images
            .list_images(ListImagesRequest {
                filter: r.into_inner().filter,
            })
            .await
            .map_err(|e| answer::<()>("stream_images", Err(e)).unwrap_err())?;
        let one = StreamImagesResponse {
            images: list.images,
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(one)))))
    }
}
