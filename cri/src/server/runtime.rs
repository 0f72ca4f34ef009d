//! `runtime.v1.RuntimeService`: request in, [`Cri`] call, response out. No logic here.

use std::pin::Pin;
use std::sync::Arc;

use protocol::grpc::runtime::v1::runtime_service_server::RuntimeService;
use protocol::grpc::runtime::v1::*;
use protocol::grpc::tonic::{self, Request, Response, Status};
use tokio_stream::Stream;

use crate::core::Cri;
use crate::error::Error;

pub struct Runtime(pub Arc<Cri>);

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Logs a failed call with its method (kubelet shows only the message) and converts it.
fn fail(method: &str, e: Error) -> Status {
    if e.is_not_found() {
        log::debug!("{method}: {e}");
    } else {
        log::warn!("{method}: {e}");
    }
    e.into()
}

fn answer<T>(method: &str, r: Result<T, Error>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| fail(method, e))
}

/// One message with everything: the chunked variants of the List calls, for kubelets that
/// ask for them.
fn once<T: Send + 'static>(item: T) -> Streamed<T> {
    Box::pin(tokio_stream::once(Ok(item)))
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(self.0.version()))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(self.0.runtime_config()))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        answer(
            "run_pod_sandbox",
            self.0.run_pod_sandbox(r.into_inner()).await,
        )
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        answer(
            "stop_pod_sandbox",
            self.0.stop_pod_sandbox(r.into_inner()).await,
        )
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        answer(
            "remove_pod_sandbox",
            self.0.remove_pod_sandbox(r.into_inner()).await,
        )
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        answer(
            "pod_sandbox_status",
            self.0.pod_sandbox_status(r.into_inner()).await,
        )
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        answer(
            "list_pod_sandbox",
            self.0.list_pod_sandbox(r.into_inner()).await,
        )
    }

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        answer(
            "create_container",
            self.0.create_container(r.into_inner()).await,
        )
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        answer(
            "start_container",
            self.0.start_container(r.into_inner()).await,
        )
    }

    async fn stop_container(
        &self,
        r: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        answer(
            "stop_container",
            self.0.stop_container(r.into_inner()).await,
        )
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        answer(
            "remove_container",
            self.0.remove_container(r.into_inner()).await,
        )
    }

    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        answer(
            "list_containers",
            self.0.list_containers(r.into_inner()).await,
        )
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        answer(
            "container_status",
            self.0.container_status(r.into_inner()).await,
        )
    }

    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        answer(
            "update_container_resources",
            self.0.update_container_resources(r.into_inner()).await,
        )
    }

    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        answer(
            "reopen_container_log",
            self.0.reopen_container_log(r.into_inner()).await,
        )
    }

    async fn exec_sync(
        &self,
        r: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        answer("exec_sync", self.0.exec_sync(r.into_inner()).await)
    }

    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        answer(
            "container_stats",
            self.0.container_stats(r.into_inner()).await,
        )
    }

    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        answer(
            "list_container_stats",
            self.0.list_container_stats(r.into_inner()).await,
        )
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        answer(
            "pod_sandbox_stats",
            self.0.pod_sandbox_stats(r.into_inner()).await,
        )
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        answer(
            "list_pod_sandbox_stats",
            self.0.list_pod_sandbox_stats(r.into_inner()).await,
        )
    }

    async fn update_runtime_config(
        &self,
        r: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        answer(
            "update_runtime_config",
            self.0.update_runtime_config(r.into_inner()).await,
        )
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        answer("status", self.0.status(r.into_inner()).await)
    }

    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        answer("exec", self.0.exec(r.into_inner()).await)
    }

    async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        answer("attach", self.0.attach(r.into_inner()).await)
    }

    async fn port_forward(
        &self,
        r: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        answer("port_forward", self.0.port_forward(r.into_inner()).await)
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "checkpointing needs CRIU, which cannot checkpoint on this host",
        ))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Err(Status::unimplemented(
            "corral-cri does not export Prometheus-style pod metrics; use the stats calls",
        ))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Err(Status::unimplemented(
            "corral-cri does not export Prometheus-style pod metrics; use the stats calls",
        ))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        Err(Status::unimplemented(
            "pod-level resource updates are not supported; containers are updated one by one",
        ))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Streamed<StreamPodSandboxMetricsResponse>>, Status> {
        Err(Status::unimplemented(
            "corral-cri does not export Prometheus-style pod metrics; use the stats calls",
        ))
    }

    async fn stream_pod_sandboxes(
        &self,
        r: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Streamed<StreamPodSandboxesResponse>>, Status> {
        let list = self
            .0
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: r.into_inner().filter,
            })
            .await
            .map_err(|e| fail("stream_pod_sandboxes", e))?;
        Ok(Response::new(once(StreamPodSandboxesResponse {
            pod_sandboxes: list.items,
        })))
    }

    async fn stream_containers(
        &self,
        r: Request<StreamContainersRequest>,
    ) -> Result<Response<Streamed<StreamContainersResponse>>, Status> {
        let list = self
            .0
            .list_containers(ListContainersRequest {
                filter: r.into_inner().filter,
            })
            .await
            .map_err(|e| fail("stream_containers", e))?;
        Ok(Response::new(once(StreamContainersResponse {
            containers: list.containers,
        })))
    }

    async fn stream_container_stats(
        &self,
        r: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Streamed<StreamContainerStatsResponse>>, Status> {
        let list = self
            .0
            .list_container_stats(ListContainerStatsRequest {
                filter: r.into_inner().filter,
            })
            .await
            .map_err(|e| fail("stream_container_stats", e))?;
        Ok(Response::new(once(StreamContainerStatsResponse {
            container_stats: list.stats,
        })))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Streamed<StreamPodSandboxStatsResponse>>, Status> {
        let list = self
            .0
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                filter: r.into_inner().filter,
            })
            .await
            .map_err(|e| fail("stream_pod_sandbox_stats", e))?;
        Ok(Response::new(once(StreamPodSandboxStatsResponse {
            pod_sandbox_stats: list.stats,
        })))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Streamed<ContainerEventResponse>>, Status> {
        let mut rx = self.0.events.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(e) => Ok(e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // A subscriber that fell behind is cut off rather than buffered for.
                        Err(Status::resource_exhausted(format!(
                            "this subscriber fell {n} events behind; list again and resubscribe"
                        )))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }
}
