//! The gRPC health service on corrald's socket: what dockerd and containerd's Go client ask
//! before they trust the daemon again after a restart.

use std::time::Duration;

use integration::{Corrald, require_root};
use protocol::grpc::grpc::health::v1::health_check_response::ServingStatus;
use protocol::grpc::grpc::health::v1::health_client::HealthClient;
use protocol::grpc::grpc::health::v1::{HealthCheckRequest, HealthListRequest};
use protocol::grpc::tonic::Code;

const T: Duration = Duration::from_secs(20);

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[test]
fn serving_until_shutdown_and_again_after_restart() {
    if !require_root() {
        return;
    }
    let mut d = Corrald::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = protocol::grpc::unix::connect(&d.address())
            .await
            .expect("connect to corrald");
        let mut health = HealthClient::new(channel);

        let status = health.check(check("")).await.expect("Check").into_inner();
        assert_eq!(status.status(), ServingStatus::Serving);
        let unknown = health.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
        let listed = health
            .list(HealthListRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed.statuses.get("").map(|s| s.status()),
            Some(ServingStatus::Serving),
            "{listed:?}"
        );

        let mut unknown = health
            .watch(check("no.such.Service"))
            .await
            .unwrap()
            .into_inner();
        let first = unknown.message().await.unwrap().expect("one answer");
        assert_eq!(first.status(), ServingStatus::ServiceUnknown);

        // A watcher sees SERVING now and NOT_SERVING once shutdown begins; its stream then
        // ends, so it cannot hold the daemon's graceful shutdown open.
        let mut watch = health.watch(check("")).await.unwrap().into_inner();
        let now = tokio::time::timeout(T, watch.message()).await.unwrap();
        assert_eq!(now.unwrap().unwrap().status(), ServingStatus::Serving);
        let pid = d.pid().expect("corrald runs") as libc::pid_t;
        // SAFETY: kill(2) on the test's own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let next = tokio::time::timeout(T, watch.message())
            .await
            .expect("no status change within the deadline");
        assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
        let end = tokio::time::timeout(T, watch.message())
            .await
            .expect("the watch did not end with the daemon");
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    });

    // A new daemon on the same socket is SERVING again.
    d.restart();
    rt.block_on(async {
        let channel = protocol::grpc::unix::connect(&d.address()).await.unwrap();
        let status = HealthClient::new(channel)
            .check(check(""))
            .await
            .expect("Check after restart")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving);
    });
}
