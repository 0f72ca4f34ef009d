//! `corral pull`: the daemon pulls (`corral.services.transfer.v1.Transfer/Pull`) and streams
//! progress, which we render (see [`crate::progress`]).

use anyhow::{Context, Result, anyhow};
use protocol::grpc::corral::services::transfer::v1 as transfer;

use crate::PullArgs;
use crate::client::{Client, rpc_err};
use crate::progress::Progress;
use crate::stdio::is_terminal;

/// Pulls and returns the image's name (the normalised reference).
pub async fn pull(client: &Client, a: &PullArgs) -> Result<String> {
    pull_to(client, a, false).await
}

/// Like [`pull`]; progress goes to stderr if `to_stderr` (for `run`, whose stdout is the
/// container's).
pub async fn pull_to(client: &Client, a: &PullArgs, to_stderr: bool) -> Result<String> {
    let credentials = match &a.user {
        None => None,
        Some(u) => Some(credentials(u, std::io::stdin().lock())?),
    };
    let mut stream = client
        .transfer()
        .pull(client.req(transfer::PullRequest {
            reference: a.reference.clone(),
            platform: a.platform.clone().unwrap_or_default(),
            plain_http: a.plain_http,
            credentials,
            ..Default::default()
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot pull {}", a.reference))?
        .into_inner();
    let tty = if to_stderr {
        is_terminal(&std::io::stderr())
    } else {
        is_terminal(&std::io::stdout())
    };
    let mut progress = Progress::new(tty, to_stderr);
    loop {
        let msg = stream
            .message()
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot pull {}", a.reference))?;
        let Some(msg) = msg else {
            return Err(anyhow!(
                "cannot pull {}: the daemon ended the stream without a result",
                a.reference
            ));
        };
        if let Some(b) = msg.blob {
            progress.update(b);
        }
        if let Some(r) = msg.result {
            progress.finish();
            let digest = r.target.map(|t| t.digest).unwrap_or_default();
            if !to_stderr {
                println!("{} {digest}", r.name);
            }
            return Ok(r.name);
        }
    }
}

/// `USER[:PASSWORD]`; a missing password is the first line of `input`.
fn credentials(user: &str, mut input: impl std::io::BufRead) -> Result<transfer::Credentials> {
    let (username, password) = match user.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => {
            let mut line = String::new();
            input
                .read_line(&mut line)
                .context("cannot read the registry password from stdin")?;
            (
                user.to_string(),
                line.trim_end_matches(['\r', '\n']).to_string(),
            )
        }
    };
    if username.is_empty() {
        return Err(anyhow!("--user: the user name is empty"));
    }
    Ok(transfer::Credentials {
        username,
        password,
        ..Default::default()
    })
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn user_and_password() {
        let c = credentials("bob:s3:cret", &b""[..]).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bob", "s3:cret")
        );
        let c = credentials("bob", &b"from-stdin\n"[..]).unwrap();
        assert_eq!(c.password, "from-stdin");
        assert!(credentials(":x", &b""[..]).is_err());
    }
}
