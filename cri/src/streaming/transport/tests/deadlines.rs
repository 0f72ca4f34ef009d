//! kubelet's stream creation deadline (30 s) for remote commands and for port-forward pairs,
//! on tokio's paused clock so the tests take no real time.

use tokio::io::AsyncWriteExt;

use super::client::{Frame, SpdyReader, SpdyWriter};
use super::{Fake, rc};
use crate::streaming::transport::http::{STREAM_CREATION_TIMEOUT, run_spdy};
use crate::streaming::transport::spdy::frame::goaway;
use crate::streaming::transport::status::Version;
use crate::streaming::transport::{RemoteCommandOptions, spdy};

#[tokio::test(start_paused = true)]
async fn a_client_that_never_opens_its_streams_is_closed_and_nothing_runs() {
    let (fake, mut ev) = Fake::new();
    let (server, client) = tokio::io::duplex(1 << 16);
    let opts = match rc(true, true, false, false) {
        crate::streaming::transport::Purpose::RemoteCommand(o) => o,
        _ => RemoteCommandOptions::default(),
    };
    let (mux, ready) = spdy::start(
        server,
        spdy::Mode::RemoteCommand {
            opts,
            version: Version::V4,
        },
    );
    let (rd, wr) = tokio::io::split(client);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    // Error and stdin, but stdout never comes.
    wr.open(&[("streamType", "error")], false).await;
    wr.open(&[("streamType", "stdin")], false).await;
    let start = tokio::time::Instant::now();
    run_spdy(mux, ready, fake, "echo-1".to_string()).await;
    assert!(start.elapsed() >= STREAM_CREATION_TIMEOUT);
    let c = rd.until_goaway().await;
    assert_eq!(c.goaway, Some(goaway::OK));
    assert_eq!(c.replies.len(), 2);
    assert!(
        ev.try_recv().is_err(),
        "the backend never ran: {:?}",
        ev.try_recv()
    );
    drop(wr.w.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn half_a_port_forward_pair_times_out_with_a_message() {
    let (fake, mut ev) = Fake::new();
    let (server, client) = tokio::io::duplex(1 << 16);
    let (_mux, ready) = spdy::start(server, spdy::Mode::PortForward);
    let spdy::Ready::PortForward(session) = ready else {
        panic!()
    };
    tokio::spawn(async move {
        use crate::streaming::transport::Backend;
        fake.port_forward("pf".into(), session).await;
    });
    let (rd, wr) = tokio::io::split(client);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let e = wr
        .open(
            &[("streamType", "error"), ("port", "80"), ("requestID", "7")],
            true,
        )
        .await;
    let mut msg = Vec::new();
    loop {
        match rd
            .next_untimed()
            .await
            .expect("frames until the error stream ends")
        {
            Frame::Data { id, data, fin } if id == e => {
                msg.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
            _ => {}
        }
    }
    let msg = String::from_utf8(msg).unwrap();
    assert!(
        msg.contains("timed out waiting for the data stream of request 7"),
        "{msg}"
    );
    assert!(ev.try_recv().is_err(), "no pair reached the backend");
}
